//! What the app knows about each language besides what the server says: the GtkSourceView
//! language id for highlighting, file extensions, and the template a new file starts from.

use std::path::Path;

/// One language the app knows.
struct Known {
    id: &'static str,
    sourceview: &'static str,
    extensions: &'static [&'static str],
    template: &'static str,
}

const KNOWN: &[Known] = &[
    Known {
        id: "python",
        sourceview: "python3",
        extensions: &["py"],
        template: "def main():\n    print(\"Hello, world!\")\n\n\nif __name__ == \"__main__\":\n    main()\n",
    },
    Known {
        id: "c",
        sourceview: "c",
        extensions: &["c", "h"],
        template: "#include <stdio.h>\n\nint main(void) {\n    printf(\"Hello, world!\\n\");\n    return 0;\n}\n",
    },
    Known {
        id: "cpp",
        sourceview: "cpp",
        extensions: &["cpp", "cc", "cxx", "hpp", "hh"],
        template: "#include <iostream>\n\nint main() {\n    std::cout << \"Hello, world!\\n\";\n    return 0;\n}\n",
    },
    Known {
        id: "rust",
        sourceview: "rust",
        extensions: &["rs"],
        template: "fn main() {\n    println!(\"Hello, world!\");\n}\n",
    },
];

fn known(id: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|known| known.id == id)
}

/// The GtkSourceView language id for highlighting `id`, if there is one.
pub fn sourceview_id(id: &str) -> Option<&'static str> {
    known(id).map(|known| known.sourceview)
}

/// The template a new file in `id` starts from (empty for a language the app does not know).
pub fn template(id: &str) -> &'static str {
    known(id).map_or("", |known| known.template)
}

/// The usual extension of `id` (`py`), for suggested file names.
pub fn extension(id: &str) -> Option<&'static str> {
    known(id).and_then(|known| known.extensions.first().copied())
}

/// The language of a file, from its extension.
pub fn for_path(path: &Path) -> Option<&'static str> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|known| known.extensions.contains(&extension.as_str()))
        .map(|known| known.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_follow_extensions_and_have_templates() {
        assert_eq!(for_path(Path::new("/a/b/hello.PY")), Some("python"));
        assert_eq!(for_path(Path::new("x.cc")), Some("cpp"));
        assert_eq!(for_path(Path::new("main.rs")), Some("rust"));
        assert_eq!(for_path(Path::new("README")), None);
        assert_eq!(sourceview_id("python"), Some("python3"));
        assert_eq!(extension("cpp"), Some("cpp"));
        assert!(template("python").contains("print("));
        assert_eq!(template("cobol"), "");
    }
}
