//! The broker's pidfile, `ringmq.pid` in its data dir: written by the running broker once its
//! listeners are up (it holds the store's lock, so it is the only broker of that dir) and removed
//! when it exits. `start`, `stop` and `restart` read it; a pidfile whose process is gone (the
//! broker was killed) is stale, and the next broker writes over it.

use std::path::{Path, PathBuf};

/// The pidfile's name in the data dir.
const NAME: &str = "ringmq.pid";

/// What a pidfile says about its data dir.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    /// No pidfile.
    None,
    /// A pidfile whose process is gone (or is some other program now), or an unreadable one.
    Stale,
    /// A broker runs with this pid.
    Running(u32),
}

pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// The pidfile of the data dir `dir`.
    pub fn of(dir: &Path) -> PidFile {
        PidFile {
            path: dir.join(NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid written in the file, when there is one.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.path)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn owner(&self) -> Owner {
        match self.pid() {
            None if self.path.exists() => Owner::Stale,
            None => Owner::None,
            Some(pid) if is_ringmq(pid) => Owner::Running(pid),
            Some(_) => Owner::Stale,
        }
    }

    /// Writes this process's pid (through a temporary file renamed into place, so a reader sees
    /// the whole pid or no file); the guard removes it again.
    pub fn write_own(&self) -> Result<Written<'_>, String> {
        let pid = std::process::id();
        let tmp = self.path.with_extension(format!("pid.{pid}"));
        std::fs::write(&tmp, format!("{pid}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("cannot write the pidfile {}: {e}", self.path.display()))?;
        Ok(Written { file: self, pid })
    }

    /// Removes the file if it still names `pid` (a later broker's file is left alone).
    pub fn remove_if(&self, pid: u32) {
        if self.pid() == Some(pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Removes a stale file.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pidfile this process wrote; removed on drop.
pub struct Written<'a> {
    file: &'a PidFile,
    pid: u32,
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        self.file.remove_if(self.pid);
    }
}

/// A live process (not a zombie) running the same program as this one: its `/proc/PID/comm`
/// (the executable's name) is this process's. A pid reused by another program is not a broker.
pub fn is_ringmq(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the state follows the last ')'.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].trim_start().chars().next();
    let own = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    !matches!(state, Some('Z' | 'X')) && stat.get(open + 1..close) == Some(own.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfile_names_its_owner_or_is_stale() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = PidFile::of(dir.path());
        assert_eq!(file.owner(), Owner::None);
        {
            let _written = file.write_own().expect("write");
            assert_eq!(file.owner(), Owner::Running(std::process::id()));
        }
        assert_eq!(file.owner(), Owner::None, "the guard removes its file");
        // pid 1 exists but runs another program (init, or the container's first process).
        std::fs::write(file.path(), "1\n").expect("write");
        assert_eq!(file.owner(), Owner::Stale);
        std::fs::write(file.path(), "garbage").expect("write");
        assert_eq!(file.owner(), Owner::Stale);
        file.remove_if(1);
        assert!(file.path().exists(), "a file naming another pid stays");
        file.remove();
        assert_eq!(file.owner(), Owner::None);
    }
}
