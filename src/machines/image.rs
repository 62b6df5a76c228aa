//! The machine images: which Dockerfile each init kind uses, and the content
//! hash that names the image so a changed Dockerfile rebuilds and an unchanged
//! one never does. Pure.

use sha2::{Digest, Sha256};

use super::spec::Init;

const SYSTEMD_DOCKERFILE: &str = include_str!("../../templates/machine/systemd/Dockerfile");
const NONE_DOCKERFILE: &str = include_str!("../../templates/machine/none/Dockerfile");

/// Repository of every machine image; the tag is `INIT-HASH`.
pub const IMAGE_REPOSITORY: &str = "provision-machine";
/// Label holding the full content hash on each machine image.
pub const LABEL_CONTENT_HASH: &str = "dev.provision.content-hash";
/// Label holding the base image tag a machine image was built from.
pub const LABEL_BASE_IMAGE: &str = "dev.provision.base-image";

/// One machine image: its Dockerfile, base image and content-derived tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineImage {
    pub init: Init,
    pub base_image: String,
    pub dockerfile: &'static str,
    /// sha256 over the base image tag and the Dockerfile, in hex.
    pub content_hash: String,
}

impl MachineImage {
    pub fn new(init: Init, base_image: &str) -> Self {
        let dockerfile = dockerfile(init);
        let mut hasher = Sha256::new();
        hasher.update(base_image.as_bytes());
        hasher.update([0]);
        hasher.update(dockerfile.as_bytes());
        MachineImage {
            init,
            base_image: base_image.to_string(),
            dockerfile,
            content_hash: hex::encode(hasher.finalize()),
        }
    }

    /// `provision-machine:systemd-0123456789ab`.
    pub fn tag(&self) -> String {
        format!(
            "{IMAGE_REPOSITORY}:{}-{}",
            self.init,
            &self.content_hash[..12]
        )
    }
}

/// The Dockerfile text for an init kind.
pub fn dockerfile(init: Init) -> &'static str {
    match init {
        Init::Systemd => SYSTEMD_DOCKERFILE,
        Init::None => NONE_DOCKERFILE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instructions(dockerfile: &str) -> Vec<&str> {
        dockerfile
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect()
    }

    #[test]
    fn both_images_share_their_first_layers() {
        // The engine's build cache reuses identical leading instructions, so the
        // second image only pays for what differs.
        let systemd = instructions(dockerfile(Init::Systemd));
        let none = instructions(dockerfile(Init::None));
        let shared = none.iter().position(|l| l.starts_with("CMD")).unwrap();
        assert_eq!(systemd[..shared], none[..shared]);
    }

    #[test]
    fn host_keys_are_never_baked_in() {
        for init in [Init::Systemd, Init::None] {
            let text = dockerfile(init);
            assert!(text.contains("rm -f /etc/ssh/ssh_host_*"), "{init}");
            assert!(text.contains("ssh-keygen -A"), "{init}");
            assert!(!text.contains("docker.io"), "{init}: docker comes later");
        }
        assert!(dockerfile(Init::Systemd).contains("STOPSIGNAL SIGRTMIN+3"));
    }

    #[test]
    fn tag_follows_content_and_base() {
        let a = MachineImage::new(Init::Systemd, "debian:bookworm");
        assert_eq!(a, MachineImage::new(Init::Systemd, "debian:bookworm"));
        assert!(a.tag().starts_with("provision-machine:systemd-"));
        assert_eq!(a.tag().len(), "provision-machine:systemd-".len() + 12);
        assert_ne!(a.tag(), MachineImage::new(Init::Systemd, "other:tag").tag());
        assert_ne!(
            a.content_hash,
            MachineImage::new(Init::None, "debian:bookworm").content_hash
        );
    }
}
