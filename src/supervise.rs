//! Supervision of walcast's long-running tasks: every task that must run until shutdown is
//! watched here under a name.
//!
//! [`Supervisor::watch`] takes a spawned task's handle and the token that asks it to stop. A
//! task that ends *before* its token is cancelled (it returned, failed or panicked) is logged
//! with its name and reported once on [`Supervisor::next_stop`]; the server then shuts down in
//! order and exits non-zero (walcast does not restart a task whose state it cannot vouch for;
//! a process manager restarts the whole node). [`TaskStates`] tells `/readyz` which tasks run.
//! A task that ends after its token is cancelled has simply finished.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How many stop reports wait to be read (more stops than tasks cannot happen; reports beyond
/// this are dropped, the first already ends the server).
const STOP_QUEUE: usize = 32;

/// What a finished task returned, as far as supervision cares.
pub trait Outcome {
    /// Why the task failed, when it did.
    fn failure(&self) -> Option<String>;
}

impl Outcome for () {
    fn failure(&self) -> Option<String> {
        None
    }
}

impl<E: std::error::Error> Outcome for Result<(), E> {
    fn failure(&self) -> Option<String> {
        self.as_ref().err().map(|e| crate::error::error_chain(e))
    }
}

/// A task that stopped before it was asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The task's name.
    pub name: &'static str,
    /// Why: `returned`, `failed: ...` or `panicked: ...`.
    pub why: String,
}

/// Whether one task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Running (or finished after it was asked to stop).
    Running,
    /// Stopped before it was asked to; the text says why.
    Stopped(String),
}

/// Every watched task's state, for `/readyz`.
#[derive(Debug, Default)]
pub struct TaskStates(Mutex<BTreeMap<&'static str, TaskState>>);

impl TaskStates {
    /// A copy of every task's state, by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, TaskState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether every task runs.
    pub fn all_running(&self) -> bool {
        self.snapshot().values().all(|s| *s == TaskState::Running)
    }

    /// Records a task's state.
    fn set(&self, name: &'static str, state: TaskState) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, state);
    }
}

/// Watches the server's long-running tasks (see the module docs).
#[derive(Debug)]
pub struct Supervisor {
    /// Where watchers report early stops.
    tx: mpsc::Sender<Stopped>,
    /// Early stops, read by the server.
    rx: mpsc::Receiver<Stopped>,
    /// Every task's state.
    states: Arc<TaskStates>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(STOP_QUEUE);
        Supervisor {
            tx,
            rx,
            states: Arc::default(),
        }
    }
}

impl Supervisor {
    /// The task states (shared with `/readyz`).
    pub fn states(&self) -> Arc<TaskStates> {
        Arc::clone(&self.states)
    }

    /// Watches `task`, which must run until `token` is cancelled. The returned handle gives
    /// the task's output (`None` if it panicked or was aborted) once it ends.
    pub fn watch<T>(
        &self,
        name: &'static str,
        token: &CancellationToken,
        task: JoinHandle<T>,
    ) -> JoinHandle<Option<T>>
    where
        T: Outcome + Send + 'static,
    {
        self.states.set(name, TaskState::Running);
        let token = token.clone();
        let tx = self.tx.clone();
        let states = Arc::clone(&self.states);
        tokio::spawn(async move {
            let (why, out) = match task.await {
                Ok(out) => match out.failure() {
                    Some(e) => (format!("failed: {e}"), Some(out)),
                    None => ("returned".to_owned(), Some(out)),
                },
                Err(e) if e.is_panic() => {
                    (format!("panicked: {}", panic_text(e.into_panic())), None)
                }
                Err(_) => ("was aborted".to_owned(), None),
            };
            if !token.is_cancelled() {
                tracing::error!(task = name, why = %why, "a task that must run until shutdown stopped; shutting down");
                states.set(name, TaskState::Stopped(why.clone()));
                let _ = tx.try_send(Stopped { name, why });
            }
            out
        })
    }

    /// The next task that stopped before it was asked to.
    pub async fn next_stop(&mut self) -> Stopped {
        match self.rx.recv().await {
            Some(s) => s,
            // The supervisor holds a sender itself, so the channel never closes.
            None => std::future::pending().await,
        }
    }
}

/// The message of a panic, when it is text.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[tokio::test]
    async fn a_task_that_stops_early_is_named_and_reported() {
        let mut sup = Supervisor::default();
        let token = CancellationToken::new();
        let panics = sup.watch(
            "panicker",
            &token,
            tokio::spawn(async {
                panic!("task died");
                #[allow(unreachable_code)]
                ()
            }),
        );
        let fails = sup.watch("failer", &token, tokio::spawn(async { Err::<(), _>(Boom) }));
        let mut stops = [
            tokio::time::timeout(Duration::from_secs(5), sup.next_stop())
                .await
                .unwrap(),
            tokio::time::timeout(Duration::from_secs(5), sup.next_stop())
                .await
                .unwrap(),
        ];
        stops.sort_by_key(|s| s.name);
        assert_eq!(stops[0].name, "failer");
        assert_eq!(stops[0].why, "failed: boom");
        assert_eq!(stops[1].name, "panicker");
        assert_eq!(stops[1].why, "panicked: task died");
        assert!(panics.await.unwrap().is_none());
        assert!(fails.await.unwrap().is_some());
        let states = sup.states();
        assert!(!states.all_running());
        assert_eq!(
            states.snapshot()["failer"],
            TaskState::Stopped("failed: boom".into())
        );
    }

    #[tokio::test]
    async fn a_task_that_ends_after_shutdown_is_not_a_stop() {
        let mut sup = Supervisor::default();
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = sup.watch(
            "worker",
            &token,
            tokio::spawn(async move { t.cancelled().await }),
        );
        assert!(sup.states().all_running());
        token.cancel();
        assert_eq!(handle.await.unwrap(), Some(()));
        assert!(sup.states().all_running());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sup.next_stop())
                .await
                .is_err()
        );
    }
}
