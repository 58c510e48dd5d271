//! The Cluster page: shown while the current server's INFO has a `node` field (it is a cluster
//! node). A worker thread then asks it for the cluster's status and every reachable node's new log
//! events about twice a second and sends snapshots over a channel to the main loop, which hands
//! them to `crate::ui::cluster_pane::KilnClusterPane`. Changing servers stops the thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::glib;

use super::KilnWindow;
use crate::client::{Client, ServerInfo};
use crate::cluster::remote::{fetch_log, fetch_status};
use crate::cluster::{LogEvent, NodeId, merge_logs};
use crate::ui::KilnClusterPane;
use crate::ui::cluster_pane::{ClusterSnapshot, DIAGRAM_EVENTS};

/// How often the page refreshes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long one question may take before the node counts as unreachable for this round.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(2);

impl KilnWindow {
    /// Shows or hides the Cluster page after the current server answered INFO (`None`: it did
    /// not answer), starting or stopping the poller.
    pub(super) fn update_cluster_page(&self, info: Option<&ServerInfo>) {
        self.stop_cluster_poll();
        let imp = self.imp();
        let clustered = info.is_some_and(|info| info.get("node").is_some());
        let remote = match self.current_target().0 {
            super::run::Target::Remote { addr, token } if clustered => Some((addr, token)),
            _ => None,
        };
        let Some((addr, token)) = remote else {
            if imp.pane_stack.visible_child_name().as_deref() == Some("cluster") {
                imp.pane_stack.set_visible_child_name("output");
            }
            imp.cluster_page.set_visible(false);
            return;
        };
        imp.cluster_page.set_visible(true);
        imp.cluster_pane.show_waiting();
        let stop = Arc::new(AtomicBool::new(false));
        imp.cluster_poll.replace(Some(Arc::clone(&stop)));
        let (sender, receiver) = async_channel::bounded::<Result<ClusterSnapshot, String>>(1);
        let spawned = std::thread::Builder::new()
            .name("kiln-cluster".into())
            .spawn(move || poll_cluster(&addr, token, &stop, &sender));
        if let Err(error) = spawned {
            imp.cluster_pane
                .show_error(&format!("cannot start a thread: {error}"));
            return;
        }
        let weak = self.downgrade();
        glib::spawn_future_local(async move {
            while let Ok(update) = receiver.recv().await {
                let Some(window) = weak.upgrade() else {
                    return;
                };
                let pane = &window.imp().cluster_pane;
                match update {
                    Ok(snapshot) => pane.set_snapshot(snapshot),
                    Err(error) => pane.show_error(&error),
                }
            }
        });
    }

    /// Tells the poller, if any, to stop; it ends within one question.
    pub(super) fn stop_cluster_poll(&self) {
        if let Some(stop) = self.imp().cluster_poll.take() {
            stop.store(true, Ordering::Relaxed);
        }
    }

    /// The Cluster page's content.
    pub fn cluster_pane(&self) -> KilnClusterPane {
        self.imp().cluster_pane.get()
    }

    /// Whether the Cluster page is offered (the current server is a cluster node).
    pub fn cluster_page_visible(&self) -> bool {
        self.imp().cluster_page.is_visible()
    }

    /// Shows the Cluster page, as clicking its switcher button does.
    pub fn show_cluster_page(&self) {
        self.imp().pane_stack.set_visible_child_name("cluster");
    }
}

/// Runs on the worker thread until `stop` is set or the window dropped the receiver.
fn poll_cluster(
    addr: &str,
    token: Option<String>,
    stop: &AtomicBool,
    sender: &async_channel::Sender<Result<ClusterSnapshot, String>>,
) {
    let client_for = |addr: &str| {
        Client::new(addr, token.clone())
            .with_connect_timeout(QUESTION_TIMEOUT)
            .with_read_timeout(Some(QUESTION_TIMEOUT))
    };
    let server = client_for(addr);
    // Each node's recent events, and the Lamport time to ask from next.
    let mut logs: BTreeMap<NodeId, (u64, Vec<LogEvent>)> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let update = fetch_status(&server)
            .map_err(|error| error.to_string())
            .map(|status| {
                for node in status.nodes.iter().filter(|node| node.reachable) {
                    // The answering node may not know its own address; ask it directly then.
                    let client = if node.id == status.answered_by || node.addr.is_empty() {
                        server.clone()
                    } else {
                        client_for(&node.addr)
                    };
                    let (since, events) = logs.entry(node.id).or_default();
                    if let Ok(new) = fetch_log(&client, *since) {
                        if let Some(last) = new.iter().map(|event| event.lamport).max() {
                            *since = (*since).max(last);
                        }
                        events.extend(new);
                        let excess = events.len().saturating_sub(DIAGRAM_EVENTS);
                        events.drain(..excess);
                    }
                }
                let merged = merge_logs(logs.values().map(|(_, events)| events.clone()).collect());
                ClusterSnapshot {
                    status,
                    events: merged,
                }
            });
        if stop.load(Ordering::Relaxed) || sender.send_blocking(update).is_err() {
            return;
        }
        let rest = POLL_INTERVAL.saturating_sub(started.elapsed());
        std::thread::sleep(rest);
    }
}
