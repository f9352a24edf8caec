//! Template hashes (`pod-template-hash`, `controller-revision-hash`): FNV-1a over the
//! template's canonical JSON and the collision count, written in the alphabet
//! Kubernetes uses for generated names (no vowels, no look-alike digits).

use k8s_openapi::api::core::v1::PodTemplateSpec;

const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Hash of a pod template; bump `collision_count` to get a different name for the same
/// template after a name clash.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(&json);
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    safe_encode(&h.to_string())
}

/// Maps each character of a decimal string into the safe alphabet.
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]}}))
        .unwrap()
    }

    #[test]
    fn equal_templates_hash_equal_and_changes_show() {
        assert_eq!(
            template_hash(&t("nginx:1"), None),
            template_hash(&t("nginx:1"), None)
        );
        assert_ne!(
            template_hash(&t("nginx:1"), None),
            template_hash(&t("nginx:2"), None)
        );
        assert_ne!(
            template_hash(&t("nginx:1"), None),
            template_hash(&t("nginx:1"), Some(1))
        );
        let h = template_hash(&t("nginx:1"), None);
        assert!(h.bytes().all(|b| ALPHABET.contains(&b)), "{h}");
        assert!(!h.is_empty() && h.len() <= 10);
    }
}
