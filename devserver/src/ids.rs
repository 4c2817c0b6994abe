//! Identifiers in LiveKit's style: a short prefix and twelve random
//! alphanumerics, as `guid.New` makes them in `livekit/protocol`.

/// Worker ids, handed out at register (`AW_…`).
pub const WORKER_PREFIX: &str = "AW_";
/// Job ids, one per dispatched job (`AJ_…`).
pub const JOB_PREFIX: &str = "AJ_";
/// Dispatch ids, one per dispatch request (`AD_…`).
pub const DISPATCH_PREFIX: &str = "AD_";
/// Room sids (`RM_…`); the dev server has no rooms, but a job names one.
pub const ROOM_PREFIX: &str = "RM_";
/// Node ids (`ND_…`), reported in `ServerInfo`.
pub const NODE_PREFIX: &str = "ND_";

/// Random characters after the prefix; the real server uses 12 too.
const ID_LEN: usize = 12;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A fresh id: `prefix` followed by random alphanumerics.
pub fn new_id(prefix: &str) -> String {
    id_from_samples(prefix, (0..ID_LEN).map(|_| rand::random::<u32>()))
}

/// Builds an id from random samples (one per character); split out so the
/// shape can be tested without randomness.
fn id_from_samples(prefix: &str, samples: impl IntoIterator<Item = u32>) -> String {
    let mut id = String::with_capacity(prefix.len() + ID_LEN);
    id.push_str(prefix);
    for sample in samples.into_iter().take(ID_LEN) {
        id.push(ALPHABET[sample as usize % ALPHABET.len()] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_length() {
        let id = new_id(WORKER_PREFIX);
        assert!(id.starts_with("AW_"));
        assert_eq!(id.len(), 3 + ID_LEN);
        assert!(id[3..].chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn ids_are_distinct() {
        assert_ne!(new_id(JOB_PREFIX), new_id(JOB_PREFIX));
    }

    #[test]
    fn samples_map_onto_the_alphabet() {
        assert_eq!(
            id_from_samples("AJ_", [0, 10, 36, 61, 62].into_iter().chain([0; 7])),
            "AJ_0Aaz00000000"
        );
    }
}
