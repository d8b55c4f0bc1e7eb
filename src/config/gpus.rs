//! `DESKGATE_GPUS`: which GPUs a host manages (every GPU NVML reports, an
//! index list, or `fake:N` virtual GPUs). Parsed here so that `config` needs
//! nothing from the launcher; `launcher::gpu` reads the inventory it names.

use std::fmt;
use std::str::FromStr;

/// The largest `fake:N` accepted; enough for benchmarks, small enough to
/// catch typos.
const MAX_FAKE_GPUS: u32 = 1024;

/// Which GPUs to manage (`DESKGATE_GPUS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every GPU NVML reports.
    Auto,
    /// These NVML indices only.
    Indices(Vec<u32>),
    /// N virtual GPUs, for hosts without NVIDIA (development, CI, benchmarks).
    Fake(u32),
}

impl FromStr for GpuSelection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        if let Some(count) = text.strip_prefix("fake:") {
            return match count.parse::<u32>() {
                Ok(n) if (1..=MAX_FAKE_GPUS).contains(&n) => Ok(Self::Fake(n)),
                _ => Err(format!(
                    "`{text}`: fake:N needs N from 1 to {MAX_FAKE_GPUS}, e.g. fake:2"
                )),
            };
        }
        let mut indices = Vec::new();
        for part in text.split(',').map(str::trim) {
            let index = part.parse::<u32>().map_err(|_| {
                format!("`{text}` is not auto, fake:N or a list of GPU indices such as 0,1,3")
            })?;
            if indices.contains(&index) {
                return Err(format!("`{text}` names GPU {index} twice"));
            }
            indices.push(index);
        }
        Ok(Self::Indices(indices))
    }
}

impl fmt::Display for GpuSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fake(n) => write!(f, "fake:{n}"),
            Self::Indices(indices) => {
                let list: Vec<String> = indices.iter().map(u32::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse_and_print_back() {
        for text in ["auto", "fake:2", "0,1,3"] {
            let selection: GpuSelection = text.parse().unwrap();
            assert_eq!(selection.to_string(), text);
        }
        assert_eq!("AUTO".parse::<GpuSelection>(), Ok(GpuSelection::Auto));
        assert_eq!(
            " 2 , 0 ".parse::<GpuSelection>(),
            Ok(GpuSelection::Indices(vec![2, 0]))
        );
    }

    #[test]
    fn bad_selections_say_what_is_accepted() {
        for text in ["", "fake:0", "fake:", "fake:99999", "0,,1", "gpu0", "1,1"] {
            let err = text.parse::<GpuSelection>().unwrap_err();
            assert!(err.contains(text.trim()), "{err}");
        }
    }
}
