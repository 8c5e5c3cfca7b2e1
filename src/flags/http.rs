//! The flags HTTP API: `GET /v1/flags/evaluate` for clients, and the service-role management
//! endpoints under `/v1/flags`.
//!
//! Management endpoints need a `service_role` JWT when the server has a JWT secret; they change
//! flags only through [`super::store`] (the `walcast.flag_*` SQL functions). Errors are
//! `{"error": {"code", "message", "hint"}}` with the stable codes listed in `docs/flags.md`;
//! database text other than the flag functions' own messages never reaches a client.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, Path as UrlPath, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::{FlagsError, RejectCode};
use super::store::{self, FlagChange, NewFlag, OverrideTarget};
use super::{Flags, ModeDisabled};
use crate::auth::{Auth, AuthRejection, ServiceRole};
use crate::error::ApiError;

/// What the flag endpoints need.
#[derive(Debug, Clone)]
pub struct FlagsState {
    /// Database pool (the `walcast.flag_*` functions).
    pub pool: deadpool_postgres::Pool,
    /// The node's flags.
    pub flags: Flags,
}

/// Most segments in one evaluation.
pub const MAX_SEGMENTS: usize = 32;
/// Longest subject or segment.
pub const MAX_KEY_LEN: usize = 256;
/// Default and largest number of history entries per request.
pub const HISTORY_LIMIT: (i64, i64) = (100, 1000);

/// The flag routes, for a state that provides [`FlagsState`] and [`Auth`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    FlagsState: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new()
        .route("/v1/flags", get(list).post(create))
        .route("/v1/flags/evaluate", get(evaluate))
        .route(
            "/v1/flags/{name}",
            get(get_one).patch(update).delete(remove),
        )
        .route("/v1/flags/{name}/rollout", put(set_rollout))
        .route(
            "/v1/flags/{name}/overrides",
            put(put_override).delete(delete_override),
        )
        .route("/v1/flags/{name}/history", get(history))
}

/// `400 invalid_request`.
fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// The HTTP status of a refused change.
pub fn reject_status(code: RejectCode) -> StatusCode {
    match code {
        RejectCode::UnknownFlag => StatusCode::NOT_FOUND,
        RejectCode::FlagExists => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl From<FlagsError> for ApiError {
    fn from(e: FlagsError) -> Self {
        match e {
            FlagsError::Rejected(r) => {
                let e = ApiError::new(reject_status(r.code), r.code.as_str(), r.message);
                match r.hint {
                    Some(h) => e.with("hint", h),
                    None => e,
                }
            }
            FlagsError::Decode(_) => {
                tracing::error!(error = %e, "flag row does not decode");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "a stored flag does not decode: is the database migrated for this walcast version?",
                )
            }
            other => {
                tracing::warn!(error = %other, "flag request failed in the database");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "Postgres failed or is unreachable; retry",
                )
            }
        }
    }
}

impl IntoResponse for ModeDisabled {
    fn into_response(self) -> Response {
        let other = self.path.other();
        ApiError::new(StatusCode::CONFLICT, "mode_disabled", self.to_string())
            .with("mode", json!(self.mode))
            .with("paths", json!([other.mode_name()]))
            .with("endpoints", json!({ other.mode_name(): other.path() }))
            .into_response()
    }
}

/// Who a change is recorded as: `http`, or `http:<sub>` for a token (`http:service_role`
/// without a subject).
fn actor(role: &ServiceRole) -> String {
    match &role.token {
        None => "http".to_owned(),
        Some(_) => format!("http:{}", role.subject().unwrap_or("service_role")),
    }
}

/// A pooled connection.
async fn client(state: &FlagsState) -> Result<deadpool_postgres::Object, ApiError> {
    state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::from(FlagsError::Pool(e)))
}

/// Parses a JSON body: syntax errors are `400 malformed_json`, shape errors `422 invalid_request`.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the body does not fit this endpoint: {e}"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not JSON: {e}"),
            )
        }
    })
}

/// The query string's parameters.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A JSON `200` answer.
fn ok(v: impl serde::Serialize) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// `GET /v1/flags/evaluate?subject=...&segments=a,b`: where to connect and every flag's value.
async fn evaluate(State(state): State<FlagsState>, RawQuery(q): RawQuery) -> Response {
    match evaluate_inner(&state, q.as_deref()) {
        Ok(v) => {
            let mut resp = ok(v);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Validates the query and evaluates.
fn evaluate_inner(state: &FlagsState, q: Option<&str>) -> Result<Value, ApiError> {
    let mut subject = None;
    let mut segments: Vec<String> = Vec::new();
    for (k, v) in query_pairs(q) {
        match k.as_str() {
            "subject" => subject = Some(v),
            "segments" | "segment" => segments.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?}: use subject and segments"
                )));
            }
        }
    }
    let subject = subject.filter(|s| !s.is_empty()).ok_or_else(|| {
        bad_request("subject is required: the user, client or dashboard id to evaluate for").with(
            "hint",
            "e.g. GET /v1/flags/evaluate?subject=user-42&segments=beta,eu",
        )
    })?;
    if subject.chars().count() > MAX_KEY_LEN {
        return Err(bad_request(format!(
            "subject is longer than {MAX_KEY_LEN} characters"
        )));
    }
    if segments.len() > MAX_SEGMENTS {
        return Err(bad_request(format!(
            "at most {MAX_SEGMENTS} segments, got {}",
            segments.len()
        )));
    }
    if let Some(s) = segments.iter().find(|s| s.chars().count() > MAX_KEY_LEN) {
        return Err(bad_request(format!(
            "segment {s:?} is longer than {MAX_KEY_LEN} characters"
        )));
    }
    let flags = &state.flags;
    let route = flags.route(&subject, &segments);
    let endpoints: serde_json::Map<String, Value> = route
        .paths
        .iter()
        .map(|p| (p.mode_name().to_owned(), Value::String(p.path().to_owned())))
        .collect();
    Ok(json!({
        "subject": subject,
        "segments": segments,
        "node": flags.node(),
        "mode": route.mode,
        "paths": route.paths.iter().map(|p| p.mode_name()).collect::<Vec<_>>(),
        "endpoints": endpoints,
        "flags": flags.evaluate_all(&subject, &segments),
    }))
}

/// Runs a management handler body: authorization first, errors as JSON.
async fn managed<F, Fut>(
    state: FlagsState,
    role: Result<ServiceRole, AuthRejection>,
    f: F,
) -> Response
where
    F: FnOnce(FlagsState, String) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let who = match role {
        Ok(r) => actor(&r),
        Err(r) => return r.api_error("manage flags").into_response(),
    };
    match f(state, who).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/flags`: every flag with its overrides.
async fn list(
    State(state): State<FlagsState>,
    role: Result<ServiceRole, AuthRejection>,
) -> Response {
    managed(state, role, |state, _| async move {
        let c = client(&state).await?;
        let flags = store::list(&c).await?;
        Ok(ok(json!({ "flags": flags })))
    })
    .await
}

/// Body of `POST /v1/flags`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Name.
    name: String,
    /// Description.
    #[serde(default)]
    description: Option<String>,
    /// Variants.
    #[serde(default)]
    variants: Option<Value>,
    /// Default variant.
    #[serde(default)]
    default_variant: Option<String>,
    /// Kill switch.
    #[serde(default)]
    enabled: Option<bool>,
    /// Rollout percentage.
    #[serde(default)]
    rollout_percentage: Option<Value>,
    /// Who to record (default: from the token).
    #[serde(default)]
    who: Option<String>,
}

/// A JSON number as a decimal string, or `invalid_percentage`.
fn percentage(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::Number(n) => Ok(n.to_string()),
        other => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            RejectCode::InvalidPercentage.as_str(),
            format!("the percentage must be a JSON number from 0 to 100, got {other}"),
        )
        .with("hint", "e.g. {\"percentage\": 25}")),
    }
}

/// `POST /v1/flags`: creates a flag; `201` with the flag.
async fn create(
    State(state): State<FlagsState>,
    role: Result<ServiceRole, AuthRejection>,
    body: Bytes,
) -> Response {
    managed(state, role, |state, who| async move {
        let b: CreateBody = parse_body(&body)?;
        let new = NewFlag {
            name: b.name,
            description: b.description,
            variants: b.variants,
            default_variant: b.default_variant,
            enabled: b.enabled,
            rollout_percentage: b.rollout_percentage.as_ref().map(percentage).transpose()?,
        };
        let c = client(&state).await?;
        let who = b.who.unwrap_or(who);
        let flag = store::create(&c, &new, Some(&who)).await?;
        Ok((StatusCode::CREATED, axum::Json(flag)).into_response())
    })
    .await
}

/// `GET /v1/flags/{name}`: one flag with its overrides.
async fn get_one(
    State(state): State<FlagsState>,
    UrlPath(name): UrlPath<String>,
    role: Result<ServiceRole, AuthRejection>,
) -> Response {
    managed(state, role, |state, _| async move {
        let c = client(&state).await?;
        match store::get(&c, &name).await? {
            Some(f) => Ok(ok(f)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                RejectCode::UnknownFlag.as_str(),
                format!("unknown flag '{name}'"),
            )
            .with("hint", "GET /v1/flags lists the flags")),
        }
    })
    .await
}

/// Body of `PATCH /v1/flags/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// Kill switch.
    #[serde(default)]
    enabled: Option<bool>,
    /// Description.
    #[serde(default)]
    description: Option<String>,
    /// Variants.
    #[serde(default)]
    variants: Option<Value>,
    /// Default variant.
    #[serde(default)]
    default_variant: Option<String>,
    /// Who to record.
    #[serde(default)]
    who: Option<String>,
}

/// `PATCH /v1/flags/{name}`: changes fields that are present.
async fn update(
    State(state): State<FlagsState>,
    UrlPath(name): UrlPath<String>,
    role: Result<ServiceRole, AuthRejection>,
    body: Bytes,
) -> Response {
    managed(state, role, |state, who| async move {
        let b: PatchBody = parse_body(&body)?;
        let change = FlagChange {
            enabled: b.enabled,
            description: b.description,
            variants: b.variants,
            default_variant: b.default_variant,
        };
        let c = client(&state).await?;
        let who = b.who.unwrap_or(who);
        Ok(ok(store::set(&c, &name, &change, Some(&who)).await?))
    })
    .await
}

/// `DELETE /v1/flags/{name}`: deletes a flag and its overrides.
async fn remove(
    State(state): State<FlagsState>,
    UrlPath(name): UrlPath<String>,
    role: Result<ServiceRole, AuthRejection>,
) -> Response {
    managed(state, role, |state, who| async move {
        let c = client(&state).await?;
        store::delete(&c, &name, Some(&who)).await?;
        Ok(ok(json!({ "deleted": name })))
    })
    .await
}

/// Body of `PUT /v1/flags/{name}/rollout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    /// 0–100.
    percentage: Value,
    /// Who to record.
    #[serde(default)]
    who: Option<String>,
}

/// `PUT /v1/flags/{name}/rollout`: sets the rollout percentage.
async fn set_rollout(
    State(state): State<FlagsState>,
    UrlPath(name): UrlPath<String>,
    role: Result<ServiceRole, AuthRejection>,
    body: Bytes,
) -> Response {
    managed(state, role, |state, who| async move {
        let b: RolloutBody = parse_body(&body)?;
        let p = percentage(&b.percentage)?;
        let c = client(&state).await?;
        let who = b.who.unwrap_or(who);
        Ok(ok(store::rollout(&c, &name, &p, Some(&who)).await?))
    })
    .await
}

/// Body of `PUT /v1/flags/{name}/overrides`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    /// A subject...
    #[serde(default)]
    subject: Option<String>,
    /// ...or a segment.
    #[serde(default)]
    segment: Option<String>,
    /// On (default) or off.
    #[serde(default)]
    enabled: Option<bool>,
    /// A pinned variant.
    #[serde(default)]
    variant: Option<String>,
    /// Who to record.
    #[serde(default)]
    who: Option<String>,
}

/// `PUT /v1/flags/{name}/overrides`: sets the override of a subject or segment.
async fn put_override(
    State(state): State<FlagsState>,
    UrlPath(name): UrlPath<String>,
    role: Result<ServiceRole, AuthRejection>,
    body: Bytes,
) -> Response {
    managed(state, role, |state, who| async move {
        let b: OverrideBody = parse_body(&body)?;
        let target = OverrideTarget {
            subject: b.subject,
            segment: b.segment,
        };
        let c = client(&state).await?;
        let who = b.who.unwrap_or(who);
        let flag = store::set_override(
            &c,
            &name,
            &target,
            b.enabled.unwrap_or(true),
            b.variant.as_deref(),
            Some(&who),
        )
        .await?;
        Ok(ok(flag))
    })
    .await
}

/// `DELETE /v1/flags/{name}/overrides?subject=...` (or `segment=`): removes an override.
async fn delete_override(
    State(state): State<FlagsState>,
    UrlPath(name): UrlPath<String>,
    RawQuery(q): RawQuery,
    role: Result<ServiceRole, AuthRejection>,
) -> Response {
    managed(state, role, |state, who| async move {
        let mut target = OverrideTarget::default();
        for (k, v) in query_pairs(q.as_deref()) {
            match k.as_str() {
                "subject" => target.subject = Some(v),
                "segment" => target.segment = Some(v),
                other => {
                    return Err(bad_request(format!(
                        "unknown parameter {other:?}: use subject or segment"
                    )));
                }
            }
        }
        let c = client(&state).await?;
        let cleared = store::clear_override(&c, &name, &target, Some(&who)).await?;
        Ok(ok(json!({ "cleared": cleared })))
    })
    .await
}

/// `GET /v1/flags/{name}/history?limit=N`: the newest changes first.
async fn history(
    State(state): State<FlagsState>,
    UrlPath(name): UrlPath<String>,
    RawQuery(q): RawQuery,
    role: Result<ServiceRole, AuthRejection>,
) -> Response {
    managed(state, role, |state, _| async move {
        let mut limit = HISTORY_LIMIT.0;
        for (k, v) in query_pairs(q.as_deref()) {
            match (k.as_str(), v.parse::<i64>()) {
                ("limit", Ok(n)) if (1..=HISTORY_LIMIT.1).contains(&n) => limit = n,
                ("limit", _) => {
                    return Err(bad_request(format!(
                        "limit must be a whole number from 1 to {}, got {v:?}",
                        HISTORY_LIMIT.1
                    )));
                }
                (other, _) => {
                    return Err(bad_request(format!(
                        "unknown parameter {other:?}: use limit"
                    )));
                }
            }
        }
        let c = client(&state).await?;
        if store::get(&c, &name).await?.is_none()
            && store::history(&c, Some(&name), 1).await?.is_empty()
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                RejectCode::UnknownFlag.as_str(),
                format!("unknown flag '{name}' (and no history for that name)"),
            ));
        }
        let entries = store::history(&c, Some(&name), limit).await?;
        Ok(ok(json!({ "history": entries })))
    })
    .await
}
