//! Errors of the data path API. Each names what failed (map, program, syscall, setting).

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object failed (is bpffs/BTF available and are we root?): {source}")]
    Load {
        #[source]
        source: BoxError,
    },
    #[error("eBPF program `{program}`: {action} failed: {source}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("map `{map}`: {op} failed: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("the eBPF object has no map `{0}` (object and lb-common out of sync?)")]
    MissingMap(&'static str),
    #[error("{what} is full ({capacity} entries); raise `{setting}`")]
    CapacityExceeded {
        what: &'static str,
        capacity: u32,
        setting: &'static str,
    },
    #[error("service `{service}`: {reason}")]
    InvalidSpec { service: String, reason: String },
    #[error("frontend {frontend} of service `{service}` is already used by service `{owner}`")]
    FrontendConflict {
        service: String,
        frontend: String,
        owner: String,
    },
    #[error("no service named `{0}`")]
    UnknownService(String),
    #[error("pinned data path at {}: {reason}", path.display())]
    Pin {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("interface `{ifname}`: {reason}")]
    Interface { ifname: String, reason: String },
}

impl Error {
    pub fn map(map: &'static str, op: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Map {
            map,
            op,
            source: source.into(),
        }
    }

    pub fn program(
        program: &'static str,
        action: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Program {
            program,
            action,
            source: source.into(),
        }
    }
}
