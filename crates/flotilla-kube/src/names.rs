//! Kubernetes names for Flotilla's objects.
//!
//! Cluster names are DNS labels already (core checks them). Model ids are not:
//! `meta-llama/Llama-3.1-8B-Instruct` has upper case, `/` and `.`. They become DNS
//! labels here, and because two ids can map to one label (`Llama.3` and `llama-3`),
//! a label that had to change carries a short hash of the original id.

/// The longest DNS label.
pub const MAX_LABEL: usize = 63;

/// A DNS-1123 label for `id`: lower case, `[a-z0-9-]`, at most `max` characters
/// (≤ 63), starting and ending with a letter or digit. An id that is a valid label
/// already is returned unchanged; any other gets `-` and 8 hex digits of its FNV-1a
/// hash, so distinct ids stay distinct.
pub fn dns_label(id: &str, max: usize) -> String {
    let max = max.clamp(10, MAX_LABEL);
    let mut slug = String::with_capacity(id.len());
    for c in id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    if slug == id && slug.len() <= max {
        return slug.to_owned();
    }
    let hash = format!("{:08x}", fnv1a(id.as_bytes()) as u32);
    let keep = max - hash.len() - 1;
    let head = slug.get(..keep.min(slug.len())).unwrap_or(slug);
    let head = head.trim_end_matches('-');
    if head.is_empty() {
        format!("m-{hash}")
    } else {
        format!("{head}-{hash}")
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// True when `s` is a DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// True when `s` is a DNS-1123 subdomain (dot-separated labels, ≤ 253).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_label_is_kept_as_it_is() {
        assert_eq!(dns_label("llama-70b", 63), "llama-70b");
    }

    #[test]
    fn a_model_id_becomes_a_label_with_a_hash_that_keeps_ids_apart() {
        let a = dns_label("meta-llama/Llama-3.1-8B-Instruct", 63);
        assert!(a.starts_with("meta-llama-llama-3-1-8b-instruct-"), "{a}");
        assert!(is_dns_label(&a), "{a}");
        assert_ne!(dns_label("Llama.3", 63), dns_label("llama-3", 63));
        assert_ne!(dns_label("Llama.3", 63), dns_label("Llama_3", 63));
    }

    #[test]
    fn long_and_symbol_only_ids_still_give_labels() {
        let long = "x".repeat(200);
        let l = dns_label(&long, 40);
        assert!(l.len() <= 40 && is_dns_label(&l), "{l}");
        let s = dns_label("///", 63);
        assert!(is_dns_label(&s), "{s}");
    }
}
