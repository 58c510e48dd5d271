//! `KilnClusterPane`: the Cluster page of the window's bottom pane, shown when the current server
//! is a cluster node. It lists the nodes (reachable, leader, term, Lamport time), the lock holder
//! and queue, and draws a space-time diagram of the recent merged log: one horizontal line per
//! node, events as dots ordered by Lamport time, an arrow from each send to its receive.
//!
//! It only displays what it is given: `crate::ui::window::cluster` polls the server on a thread
//! and calls `set_snapshot`; the data types are `crate::cluster::remote`'s and `crate::cluster::log`'s.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{CompositeTemplate, cairo, glib};

use crate::cluster::{ClusterStatus, Event, LogEvent, NodeId, Role};

/// How many of the most recent events the diagram shows.
pub(crate) const DIAGRAM_EVENTS: usize = 80;

/// What the window's poller hands the pane: the cluster as one node sees it and the merged log.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSnapshot {
    /// Nodes, leader, lock.
    pub(crate) status: ClusterStatus,
    /// Recent events of every reachable node, merged in Lamport order.
    pub(crate) events: Vec<LogEvent>,
}

mod imp {
    use super::*;

    #[derive(Debug, Default, CompositeTemplate)]
    #[template(resource = "/io/github/kiln/Kiln/ui/cluster-pane.ui")]
    pub struct KilnClusterPane {
        /// The top box; a template child so `dispose_template` unparents it.
        #[template_child]
        pub(super) content: TemplateChild<gtk::Box>,
        #[template_child]
        pub(super) nodes_list: TemplateChild<gtk::ListBox>,
        #[template_child]
        pub(super) lock_label: TemplateChild<gtk::Label>,
        #[template_child]
        pub(super) queue_label: TemplateChild<gtk::Label>,
        #[template_child]
        pub(super) error_label: TemplateChild<gtk::Label>,
        #[template_child]
        pub(super) diagram: TemplateChild<gtk::DrawingArea>,
        /// The last snapshot shown.
        pub(super) snapshot: RefCell<Option<ClusterSnapshot>>,
        /// The node list's rows and their status icons.
        pub(super) rows: RefCell<Vec<(adw::ActionRow, gtk::Image)>>,
        /// Rows in the node list.
        pub(super) nodes_shown: Cell<usize>,
        /// Nodes shown as the acting leader.
        pub(super) leaders_shown: Cell<usize>,
        /// Nodes shown as unreachable.
        pub(super) unreachable_shown: Cell<usize>,
        /// Send→receive arrows in the last drawing.
        pub(super) arrows_drawn: Cell<usize>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for KilnClusterPane {
        const NAME: &'static str = "KilnClusterPane";
        type Type = super::KilnClusterPane;
        type ParentType = gtk::Widget;

        fn class_init(klass: &mut Self::Class) {
            klass.bind_template();
            klass.set_layout_manager_type::<gtk::BinLayout>();
        }

        fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
            obj.init_template();
        }
    }

    impl ObjectImpl for KilnClusterPane {
        fn constructed(&self) {
            self.parent_constructed();
            let weak = self.obj().downgrade();
            self.diagram.set_draw_func(move |area, cr, width, height| {
                if let Some(pane) = weak.upgrade() {
                    pane.draw_diagram(area, cr, f64::from(width), f64::from(height));
                }
            });
            self.obj().show_waiting();
        }

        fn dispose(&self) {
            self.dispose_template();
        }
    }

    impl WidgetImpl for KilnClusterPane {}
}

glib::wrapper! {
    /// The Cluster page of the window.
    pub struct KilnClusterPane(ObjectSubclass<imp::KilnClusterPane>)
        @extends gtk::Widget,
        @implements gtk::Buildable, gtk::ConstraintTarget;
}

impl Default for KilnClusterPane {
    fn default() -> Self {
        glib::Object::new()
    }
}

impl KilnClusterPane {
    /// How many nodes the list shows.
    pub fn nodes_shown(&self) -> usize {
        self.imp().nodes_shown.get()
    }

    /// How many nodes the list marks as the acting leader.
    pub fn leaders_shown(&self) -> usize {
        self.imp().leaders_shown.get()
    }

    /// How many nodes the list shows as unreachable.
    pub fn unreachable_shown(&self) -> usize {
        self.imp().unreachable_shown.get()
    }

    /// How many send→receive arrows the diagram drew last time it was drawn.
    pub fn arrows_drawn(&self) -> usize {
        self.imp().arrows_drawn.get()
    }

    /// Clears the pane until the first answer arrives.
    pub(crate) fn show_waiting(&self) {
        let imp = self.imp();
        imp.snapshot.replace(None);
        self.set_row_count(0);
        imp.nodes_shown.set(0);
        imp.leaders_shown.set(0);
        imp.unreachable_shown.set(0);
        imp.lock_label.set_label("Asking the cluster…");
        imp.queue_label.set_label("");
        imp.error_label.set_visible(false);
        imp.diagram.queue_draw();
    }

    /// Shows why the last question failed, keeping the last good snapshot on screen.
    pub(crate) fn show_error(&self, message: &str) {
        let label = &self.imp().error_label;
        label.set_label(&format!("Cannot ask the cluster: {message}"));
        label.set_visible(true);
    }

    /// Shows a fresh snapshot.
    pub(crate) fn set_snapshot(&self, snapshot: ClusterSnapshot) {
        let imp = self.imp();
        imp.error_label.set_visible(false);
        let leader = snapshot.status.acting_leader().map(|status| status.id);
        // Rows are updated in place so focus and screen readers are not disturbed twice a second.
        self.set_row_count(snapshot.status.nodes.len());
        let rows = imp.rows.borrow();
        let mut leaders = 0;
        for (node, (row, icon)) in snapshot.status.nodes.iter().zip(rows.iter()) {
            row.set_title(&format!("Node {}", node.id));
            icon.set_icon_name(Some(match (&node.status, leader) {
                (Some(_), Some(id)) if id == node.id => "starred-symbolic",
                (Some(_), _) => "network-transmit-receive-symbolic",
                (None, _) => "network-offline-symbolic",
            }));
            let subtitle = match &node.status {
                Some(status) => {
                    let part = if Some(status.id) == leader {
                        leaders += 1;
                        "Leader".to_owned()
                    } else {
                        match (status.role, status.leader) {
                            (Role::Candidate, _) => "Electing".to_owned(),
                            (Role::AwaitingCoordinator, _) => "Awaiting coordinator".to_owned(),
                            (Role::Coordinator, _) => "Coordinator without majority".to_owned(),
                            (Role::Follower, Some(id)) => format!("Follows {id}"),
                            (Role::Follower, None) => "No leader".to_owned(),
                        }
                    };
                    format!("{part} · term {} · Lamport {}", status.term, status.lamport)
                }
                None => format!(
                    "Unreachable{}",
                    node.error
                        .as_deref()
                        .map(|error| format!(": {error}"))
                        .unwrap_or_default()
                ),
            };
            row.set_subtitle(&subtitle);
        }
        drop(rows);
        imp.nodes_shown.set(snapshot.status.nodes.len());
        imp.leaders_shown.set(leaders);
        imp.unreachable_shown.set(
            snapshot
                .status
                .nodes
                .iter()
                .filter(|node| node.status.is_none())
                .count(),
        );

        let lock = match snapshot.status.lock_holder() {
            Some(holder) => format!(
                "Lock: held by node {} (fence {})",
                holder.node, holder.fence
            ),
            None if leader.is_some() => "Lock: free".to_owned(),
            None => "Lock: no leader acting".to_owned(),
        };
        imp.lock_label.set_label(&lock);
        let queue = snapshot.status.queue();
        let queue = if queue.is_empty() {
            "Queue: empty".to_owned()
        } else {
            let names: Vec<String> = queue
                .iter()
                .map(|waiting| format!("node {}", waiting.node))
                .collect();
            format!("Queue: {}", names.join(", "))
        };
        imp.queue_label.set_label(&queue);
        imp.snapshot.replace(Some(snapshot));
        imp.diagram.queue_draw();
    }

    /// Adds or removes rows until the list has `count`.
    fn set_row_count(&self, count: usize) {
        let imp = self.imp();
        let mut rows = imp.rows.borrow_mut();
        while rows.len() > count {
            if let Some((row, _)) = rows.pop() {
                imp.nodes_list.remove(&row);
            }
        }
        while rows.len() < count {
            let row = adw::ActionRow::new();
            row.set_subtitle_lines(2);
            let icon = gtk::Image::new();
            row.add_prefix(&icon);
            imp.nodes_list.append(&row);
            rows.push((row, icon));
        }
    }

    fn draw_diagram(&self, area: &gtk::DrawingArea, cr: &cairo::Context, width: f64, height: f64) {
        let imp = self.imp();
        let snapshot = imp.snapshot.borrow();
        let Some(snapshot) = snapshot.as_ref() else {
            imp.arrows_drawn.set(0);
            return;
        };
        #[allow(deprecated)] // `Widget::color` needs GTK 4.10; we build against 4.8.
        let foreground = area.style_context().color();
        let (fr, fg, fb) = (
            f64::from(foreground.red()),
            f64::from(foreground.green()),
            f64::from(foreground.blue()),
        );
        let nodes: Vec<NodeId> = snapshot.status.nodes.iter().map(|node| node.id).collect();
        if nodes.is_empty() {
            imp.arrows_drawn.set(0);
            return;
        }
        let lane_gap = height / (nodes.len() as f64 + 1.0);
        let lane_y: HashMap<NodeId, f64> = nodes
            .iter()
            .enumerate()
            .map(|(index, id)| (*id, lane_gap * (index as f64 + 1.0)))
            .collect();
        let left = 64.0;
        let right = width - 12.0;

        // The lanes, with their names.
        cr.set_line_width(1.0);
        cr.set_font_size(12.0);
        for report in &snapshot.status.nodes {
            let y = lane_y[&report.id];
            let alpha = if report.reachable { 0.5 } else { 0.2 };
            cr.set_source_rgba(fr, fg, fb, alpha);
            cr.move_to(left, y);
            cr.line_to(right, y);
            let _ = cr.stroke();
            cr.set_source_rgba(fr, fg, fb, if report.reachable { 1.0 } else { 0.5 });
            cr.move_to(8.0, y + 4.0);
            let _ = cr.show_text(&format!("Node {}", report.id));
        }

        let start = snapshot.events.len().saturating_sub(DIAGRAM_EVENTS);
        let events: Vec<&LogEvent> = snapshot.events[start..]
            .iter()
            .filter(|event| lane_y.contains_key(&event.node))
            .collect();
        let step = (right - left) / (events.len().max(1) as f64 + 1.0);
        let x_of = |index: usize| left + step * (index as f64 + 1.0);
        let sends: HashMap<(NodeId, u64), usize> = events
            .iter()
            .enumerate()
            .filter(|(_, event)| matches!(event.event, Event::Send { .. }))
            .map(|(index, event)| ((event.node, event.lamport), index))
            .collect();

        // Arrows first, so the dots sit on top.
        let mut arrows = 0;
        cr.set_source_rgba(0.21, 0.52, 0.89, 0.9);
        cr.set_line_width(1.5);
        for (index, event) in events.iter().enumerate() {
            let Event::Receive {
                from, sent_lamport, ..
            } = &event.event
            else {
                continue;
            };
            let Some(&send_index) = sends.get(&(*from, *sent_lamport)) else {
                continue;
            };
            let (x0, y0) = (x_of(send_index), lane_y[from]);
            let (x1, y1) = (x_of(index), lane_y[&event.node]);
            cr.move_to(x0, y0);
            cr.line_to(x1, y1);
            let _ = cr.stroke();
            let angle = (y1 - y0).atan2(x1 - x0);
            for side in [-0.4_f64, 0.4] {
                cr.move_to(x1, y1);
                cr.line_to(
                    x1 - 8.0 * (angle + side).cos(),
                    y1 - 8.0 * (angle + side).sin(),
                );
            }
            let _ = cr.stroke();
            arrows += 1;
        }
        imp.arrows_drawn.set(arrows);

        // A legend in the bottom right corner, in the same colours.
        cr.set_font_size(11.0);
        let mut x = right - 250.0;
        let y = height - 8.0;
        for (label, (r, g, b)) in [
            ("election", ELECTION_COLOUR),
            ("lock", LOCK_COLOUR),
            ("other event", (fr, fg, fb)),
        ] {
            cr.set_source_rgb(r, g, b);
            cr.arc(x, y - 4.0, 3.5, 0.0, std::f64::consts::TAU);
            let _ = cr.fill();
            cr.set_source_rgba(fr, fg, fb, 0.7);
            cr.move_to(x + 7.0, y);
            let _ = cr.show_text(label);
            x += 75.0;
        }

        for (index, event) in events.iter().enumerate() {
            let (r, g, b) = dot_colour(&event.event).unwrap_or((fr, fg, fb));
            cr.set_source_rgb(r, g, b);
            cr.arc(
                x_of(index),
                lane_y[&event.node],
                3.5,
                0.0,
                std::f64::consts::TAU,
            );
            let _ = cr.fill();
        }
    }
}

const ELECTION_COLOUR: (f64, f64, f64) = (0.88, 0.11, 0.14);
const LOCK_COLOUR: (f64, f64, f64) = (0.18, 0.76, 0.49);

/// Election events red, lock events green, messages in the text colour.
fn dot_colour(event: &Event) -> Option<(f64, f64, f64)> {
    match event {
        Event::ElectionStarted
        | Event::Announced
        | Event::Elected
        | Event::Regained
        | Event::LostMajority
        | Event::SteppedDown
        | Event::LeaderChanged { .. } => Some(ELECTION_COLOUR),
        Event::Granted { .. }
        | Event::Adopted { .. }
        | Event::Queued { .. }
        | Event::Requested { .. }
        | Event::Acquired { .. }
        | Event::Released { .. }
        | Event::Freed { .. } => Some(LOCK_COLOUR),
        _ => None,
    }
}
