//! `service logs` across nodes. The CLI asks its manager for the tasks (a `TaskList`
//! read), then for chunks of their containers' logs node by node (`NodeLogs`). The
//! manager reads its own node's logs through its driver (`Effect::ReadLogs`) and asks
//! any other node with `PeerMsg::LogRead`, whose driver does the same and answers with
//! `PeerMsg::LogPieces`.
//!
//! Reads are pulls from a cursor the CLI keeps: the manager and the nodes hold nothing
//! between chunks, so a lost message or answer costs a repeat of the same read (every
//! [`LOG_RETRY`]), a node that stays silent fails the request at [`LOG_DEADLINE`], and
//! `-f` is the CLI asking again from where it stopped. Each answer is bounded
//! (`api::LOG_ANSWER_BYTES`) so it fits one transport message.

use std::time::{Duration, Instant};

use super::core::{Control, Effect, Reply, RequestId};
use super::msg::PeerMsg;
use crate::api::{LogPiece, LogRead, Response, MAX_LOG_NAME, MAX_LOG_READS};
use crate::raft::NodeId;
use crate::transport::PeerKey;

/// A log read sent to another node and not answered within this is sent again (the
/// message or its answer was lost; reading again is harmless).
pub const LOG_RETRY: Duration = Duration::from_secs(1);
/// A node that answers no log read within this is reported as unreachable: long enough
/// for a handshake with a node that restarted, short enough that `service logs` with a
/// node down prints the others' lines without a long wait.
pub const LOG_DEADLINE: Duration = Duration::from_secs(5);
/// Log reads of this node's CLI waiting on other nodes at once; more are refused. The
/// API socket admits fewer connections than this.
pub const MAX_LOG_ASKS: usize = 256;

/// A log read of our CLI waiting on another node.
#[derive(Debug)]
pub(super) struct LogAsk {
    request: RequestId,
    key: PeerKey,
    reads: Vec<LogRead>,
    resend_at: Instant,
    deadline: Instant,
}

impl LogAsk {
    pub(super) fn wake_at(&self) -> Instant {
        self.resend_at.min(self.deadline)
    }
}

/// Why a batch of reads is refused: too many, or a name no container has.
fn check(reads: &[LogRead]) -> Result<(), String> {
    if reads.len() > MAX_LOG_READS {
        return Err(format!(
            "{} log reads in one request; the limit is {MAX_LOG_READS}",
            reads.len()
        ));
    }
    match reads.iter().find(|r| r.container.len() > MAX_LOG_NAME) {
        Some(r) => Err(format!(
            "a container name of {} bytes; the limit is {MAX_LOG_NAME}",
            r.container.len()
        )),
        None => Ok(()),
    }
}

impl Control {
    /// Our CLI (on a manager) asks for chunks of logs on `node`.
    pub(super) fn start_log_read(
        &mut self,
        now: Instant,
        request: RequestId,
        node: NodeId,
        reads: Vec<LogRead>,
    ) {
        let refuse = |c: &mut Control, why: String| {
            c.emit(Effect::Answer {
                id: request,
                resp: Response::Error(why),
            })
        };
        if let Err(e) = check(&reads) {
            return refuse(self, e);
        }
        if node == self.me.id {
            return self.emit(Effect::ReadLogs {
                reply: Reply::Local(request),
                reads,
            });
        }
        let Some(key) = self.peer_key(node) else {
            return refuse(self, format!("node {node} is not known to this manager"));
        };
        if self.log_asks.len() >= MAX_LOG_ASKS {
            return refuse(
                self,
                format!("{MAX_LOG_ASKS} log reads are already waiting on other nodes; try again in a moment"),
            );
        }
        let id = self.next_ask_id();
        self.send(
            key,
            PeerMsg::LogRead {
                id,
                reads: reads.clone(),
            },
        );
        self.log_asks.insert(
            id,
            LogAsk {
                request,
                key,
                reads,
                resend_at: now + LOG_RETRY,
                deadline: now + LOG_DEADLINE,
            },
        );
    }

    /// Repeats unanswered log reads and fails those past their deadline.
    pub(super) fn log_timers(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .log_asks
            .iter()
            .filter(|(_, a)| now >= a.wake_at())
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(a) = self.log_asks.get_mut(&id) else {
                continue;
            };
            if now >= a.deadline {
                let request = a.request;
                self.log_asks.remove(&id);
                self.emit(Effect::Answer {
                    id: request,
                    resp: Response::Error(format!(
                        "no answer within {} s (the node is down or unreachable)",
                        LOG_DEADLINE.as_secs()
                    )),
                });
            } else {
                a.resend_at = now + LOG_RETRY;
                let (key, reads) = (a.key, a.reads.clone());
                self.send(key, PeerMsg::LogRead { id, reads });
            }
        }
    }

    /// A manager asks this node for logs.
    pub(super) fn on_log_read(&mut self, from: PeerKey, id: u64, reads: Vec<LogRead>) {
        if !self.is_from_manager(&from) {
            return self.count_ignored();
        }
        match check(&reads) {
            Ok(()) => self.emit(Effect::ReadLogs {
                reply: Reply::Remote { to: from, id },
                reads,
            }),
            Err(e) => self.send(from, PeerMsg::LogPieces { id, result: Err(e) }),
        }
    }

    /// A node answers one of our log reads; only the node asked counts.
    pub(super) fn on_log_pieces(
        &mut self,
        from: PeerKey,
        id: u64,
        result: Result<Vec<LogPiece>, String>,
    ) {
        if self.log_asks.get(&id).is_none_or(|a| a.key != from) {
            return self.count_ignored(); // a late repeat, or not from the node asked
        }
        let Some(a) = self.log_asks.remove(&id) else {
            return;
        };
        let resp = result.map_or_else(Response::Error, Response::LogPieces);
        self.emit(Effect::Answer {
            id: a.request,
            resp,
        });
    }

    /// The driver read logs (see [`Effect::ReadLogs`]): to our CLI, or to the manager
    /// that asked.
    pub(super) fn on_logs_read(&mut self, reply: Reply, result: Result<Vec<LogPiece>, String>) {
        match reply {
            Reply::Local(id) => {
                let resp = result.map_or_else(Response::Error, Response::LogPieces);
                self.emit(Effect::Answer { id, resp });
            }
            Reply::Remote { to, id } => {
                let msg = PeerMsg::LogPieces { id, result };
                let len = msg.encoded_len();
                if len > crate::transport::MAX_MESSAGE_SIZE {
                    // Budgets keep answers well below; should one not fit, say so.
                    let why = format!(
                        "the log answer is {len} bytes, over the {}-byte limit of a message between nodes",
                        crate::transport::MAX_MESSAGE_SIZE
                    );
                    self.send(
                        to,
                        PeerMsg::LogPieces {
                            id,
                            result: Err(why),
                        },
                    );
                } else {
                    self.send(to, msg);
                }
            }
        }
    }
}
