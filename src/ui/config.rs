//! Build-time facts about the app: its id, profile and resource path. Meson passes `APP_ID` and
//! `KILN_PROFILE` to cargo in the environment; a plain `cargo build` gets the defaults below, which
//! match `meson_options.txt` and `build.rs`.

/// The application id (`io.github.kiln.Kiln`, or `io.github.kiln.Kiln.Devel` in the development
/// profile); also the GSettings schema id and the icon name.
pub const APP_ID: &str = match option_env!("APP_ID") {
    Some(id) => id,
    None => "io.github.kiln.Kiln",
};

/// `default` or `development`.
pub const PROFILE: &str = match option_env!("KILN_PROFILE") {
    Some(profile) => profile,
    None => "default",
};

/// Where the GResource bundle lives; the same for every profile.
pub const RESOURCE_BASE: &str = "/io/github/kiln/Kiln";

/// The crate version, shown in About.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether this is the development profile (striped header bar, `.Devel` id).
pub fn is_development() -> bool {
    PROFILE == "development"
}
