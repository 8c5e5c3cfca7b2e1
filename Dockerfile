# Build and run walcast in a container (used by docker-compose.yml).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin walcast

FROM debian:bookworm-slim
COPY --from=build /src/target/release/walcast /usr/local/bin/walcast
EXPOSE 4000
ENTRYPOINT []
CMD ["walcast", "serve"]
