//! The GPU profiles users claim by name (DESIGN §1): how many GPUs each
//! holds. A profile's GPUs are always on one host; the names are part of the
//! API and of metric labels, so the set is closed.

/// A GPU profile users claim by name (DESIGN §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Its name.
    pub name: &'static str,
    /// GPUs it holds, all on one host.
    pub gpus: u32,
}

/// The profiles offered.
pub const PROFILES: [Profile; 4] = [
    Profile {
        name: "small",
        gpus: 1,
    },
    Profile {
        name: "medium",
        gpus: 2,
    },
    Profile {
        name: "large",
        gpus: 4,
    },
    Profile {
        name: "max",
        gpus: 8,
    },
];

/// The profile called `name`.
pub fn profile_named(name: &str) -> Option<Profile> {
    PROFILES.iter().copied().find(|p| p.name == name)
}

/// The name of the profile with `gpus` GPUs.
pub fn profile_name(gpus: u32) -> &'static str {
    PROFILES
        .iter()
        .find(|p| p.gpus == gpus)
        .map_or("custom", |p| p.name)
}
