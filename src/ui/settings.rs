//! Opening the app's GSettings. An installed app finds its schema in the system schema directories;
//! `cargo run` and `cargo test` use the copy `build.rs` compiled into `OUT_DIR`, so nothing has to
//! be installed to try the app. The keys are documented in `data/*.gschema.xml.in`.

use gtk::gio;

use super::config::APP_ID;

/// Where `build.rs` compiled the schema, if it could.
const BUILD_SCHEMA_DIR: Option<&str> = option_env!("KILN_SCHEMA_DIR");

/// Opens the app's settings.
///
/// # Errors
/// A message naming the schema when neither an installed schema nor the build's copy is found.
pub fn open() -> Result<gio::Settings, String> {
    let default_source = gio::SettingsSchemaSource::default();
    if let Some(schema) = default_source
        .as_ref()
        .and_then(|source| source.lookup(APP_ID, true))
    {
        return Ok(gio::Settings::new_full(
            &schema,
            None::<&gio::SettingsBackend>,
            None,
        ));
    }
    let Some(dir) = BUILD_SCHEMA_DIR else {
        return Err(format!(
            "the GSettings schema {APP_ID} is not installed; install Kiln with meson or set GSETTINGS_SCHEMA_DIR"
        ));
    };
    let source = gio::SettingsSchemaSource::from_directory(dir, default_source.as_ref(), false)
        .map_err(|error| format!("cannot read the GSettings schema in {dir}: {error}"))?;
    let schema = source
        .lookup(APP_ID, false)
        .ok_or_else(|| format!("the GSettings schema {APP_ID} is missing from {dir}"))?;
    Ok(gio::Settings::new_full(
        &schema,
        None::<&gio::SettingsBackend>,
        None,
    ))
}
