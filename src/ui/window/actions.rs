//! The window's actions (`win.*`): run, stop, build, check, new, open, save, save-as, find. Their
//! accelerators are set by the application; their enabled states follow the job (`update_job_state`)
//! so the buttons bound to them grey out by themselves.

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::gio;

use super::KilnWindow;
use crate::protocol::Intent;

impl KilnWindow {
    pub(super) fn setup_actions(&self) {
        let run = gio::ActionEntry::builder("run")
            .activate(|window: &Self, _, _| window.start_job(Intent::Run))
            .build();
        let build = gio::ActionEntry::builder("build")
            .activate(|window: &Self, _, _| window.start_job(Intent::Build))
            .build();
        let check = gio::ActionEntry::builder("check")
            .activate(|window: &Self, _, _| window.start_job(Intent::Check))
            .build();
        let stop = gio::ActionEntry::builder("stop")
            .activate(|window: &Self, _, _| window.on_stop())
            .build();
        let new = gio::ActionEntry::builder("new")
            .activate(|window: &Self, _, _| window.on_new())
            .build();
        let open = gio::ActionEntry::builder("open")
            .activate(|window: &Self, _, _| window.on_open())
            .build();
        let save = gio::ActionEntry::builder("save")
            .activate(|window: &Self, _, _| window.on_save())
            .build();
        let save_as = gio::ActionEntry::builder("save-as")
            .activate(|window: &Self, _, _| window.on_save_as())
            .build();
        let find = gio::ActionEntry::builder("find")
            .activate(|window: &Self, _, _| {
                let imp = window.imp();
                let searching = !imp.search_bar.is_search_mode();
                imp.search_bar.set_search_mode(searching);
                if searching {
                    imp.search_entry.grab_focus();
                }
            })
            .build();
        self.add_action_entries([run, build, check, stop, new, open, save, save_as, find]);
    }

    /// Enables or disables one of the window's actions.
    pub(super) fn set_action_enabled(&self, name: &str, enabled: bool) {
        if let Some(action) = self.lookup_action(name).and_downcast::<gio::SimpleAction>() {
            action.set_enabled(enabled);
        }
    }

    /// Run and Download while idle, Stop while a job runs.
    pub(super) fn update_job_state(&self) {
        let running = self.is_running();
        self.set_action_enabled("run", !running);
        self.set_action_enabled("build", !running);
        self.set_action_enabled("check", !running);
        self.set_action_enabled("stop", running);
        let imp = self.imp();
        imp.spinner.set_visible(running);
        imp.spinner.set_spinning(running);
    }
}
