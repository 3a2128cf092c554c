//! Where an installed broker finds its configuration. A binary run from a cargo build directory
//! (a checkout) keeps its embedded defaults and `./data` when no `-c` is given; an installed one
//! (the .deb's `/usr/bin/ringmq`, the Docker image's, a copy anywhere else) reads
//! `/etc/ringmq/ringmq.toml` when that file exists. `RINGMQ_SYSTEM_CONFIG` names another file in
//! its place, for tests and packagers that cannot write /etc.

use std::path::{Path, PathBuf};

/// The system configuration file of an installed broker.
pub const SYSTEM_CONFIG: &str = "/etc/ringmq/ringmq.toml";

/// Names the file read in place of [`SYSTEM_CONFIG`] (for tests and packagers).
pub const SYSTEM_CONFIG_ENV: &str = "RINGMQ_SYSTEM_CONFIG";

/// The system configuration file, when this binary is installed and the file exists.
pub fn system_config() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if built_in_checkout(&exe) {
        return None;
    }
    let path =
        std::env::var_os(SYSTEM_CONFIG_ENV).map_or_else(|| SYSTEM_CONFIG.into(), PathBuf::from);
    path.is_file().then_some(path)
}

/// A binary below a directory tagged with `CACHEDIR.TAG` was built there: cargo tags every
/// target directory (`target/`, or wherever `CARGO_TARGET_DIR` points) so.
fn built_in_checkout(exe: &Path) -> bool {
    exe.ancestors()
        .skip(1)
        .any(|dir| dir.join("CACHEDIR.TAG").is_file())
}

#[cfg(test)]
mod tests {
    use super::built_in_checkout;

    #[test]
    fn a_binary_under_a_cargo_target_dir_is_a_checkout_build() {
        let root = tempfile::tempdir().expect("temp dir");
        let target = root.path().join("target");
        let bin = target.join("release").join("ringmq");
        std::fs::create_dir_all(bin.parent().expect("parent")).expect("dirs");
        assert!(!built_in_checkout(&bin));
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n",
        )
        .expect("tag");
        assert!(built_in_checkout(&bin));
        assert!(!built_in_checkout(&root.path().join("usr/bin/ringmq")));
    }
}
