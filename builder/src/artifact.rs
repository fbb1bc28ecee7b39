//! The firstboot binary this builder ships with: found, checked to be a
//! static x86_64 executable, and hashed. Nodes fetch it by a URL named by
//! its hash and Ignition checks the sha512, so the config pins the exact
//! bytes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha512};

pub const FIRSTBOOT_ENV: &str = "BUILDER_FIRSTBOOT";

#[derive(Debug, Clone)]
pub struct Firstboot {
    pub path: PathBuf,
    pub size: u64,
    pub sha512: String,
}

impl Firstboot {
    /// The content-addressed object name: changes whenever the bytes do,
    /// so a published URL never serves two different binaries.
    pub fn object_name(&self) -> String {
        format!("firstboot-{}", &self.sha512[..32])
    }

    pub fn url(&self, base_url: &str) -> String {
        format!("{base_url}/{}", self.object_name())
    }

    /// Ignition's spelling of the hash.
    pub fn verification(&self) -> String {
        format!("sha512-{}", self.sha512)
    }

    /// Find the binary: the given path, else `$BUILDER_FIRSTBOOT`, else
    /// `firstboot` beside this builder executable (how releases ship).
    pub fn locate(given: Option<&Path>) -> Result<Firstboot> {
        let path = match given {
            Some(p) => p.to_owned(),
            None => match std::env::var_os(FIRSTBOOT_ENV) {
                Some(p) => PathBuf::from(p),
                None => {
                    let exe = std::env::current_exe().context("cannot find this executable")?;
                    exe.with_file_name("firstboot")
                }
            },
        };
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read the firstboot binary {}; build it with `make build` (it lands \
                 beside builder in target/dist/) or name it with --firstboot",
                path.display()
            )
        })?;
        Firstboot::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: PathBuf, bytes: &[u8]) -> Result<Firstboot> {
        check_static_elf(bytes)
            .with_context(|| format!("{} cannot be shipped to nodes", path.display()))?;
        Ok(Firstboot {
            path,
            size: bytes.len() as u64,
            sha512: hex::encode(Sha512::digest(bytes)),
        })
    }
}

/// Nodes run Fedora CoreOS or Flatcar, whose libraries need not match the
/// build machine's, so firstboot must be a static x86_64 ELF executable:
/// one with no program interpreter (PT_INTERP).
pub fn check_static_elf(bytes: &[u8]) -> Result<()> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if bytes.get(..4) != Some(b"\x7fELF") {
        bail!("it is not an ELF executable");
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) || u16_at(18) != Some(0x3e) {
        bail!("it is not a 64-bit little-endian x86_64 executable");
    }
    if !matches!(u16_at(16), Some(2 | 3)) {
        bail!("it is an ELF file but not an executable");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("its ELF header is truncated");
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(i * usize::from(phentsize)));
        let Some(kind) = at.and_then(u32_at) else {
            bail!("its program headers are truncated");
        };
        if kind == PT_INTERP {
            bail!("it is dynamically linked; nodes need the static build (`make firstboot`)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_refused() {
        // This test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = check_static_elf(&me).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
    }

    #[test]
    fn non_elf_is_refused() {
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        assert!(check_static_elf(b"\x7fELF").is_err());
    }

    #[test]
    fn the_tiny_static_fixture_passes() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tiny-static.elf"
        );
        let fb = Firstboot::locate(Some(Path::new(fixture))).unwrap();
        assert_eq!(fb.sha512.len(), 128);
        assert_eq!(fb.object_name().len(), "firstboot-".len() + 32);
    }
}
