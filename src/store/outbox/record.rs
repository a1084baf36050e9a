//! The stored layout of one outbox record: a group of events (one event, or
//! a MessagePack array of them), optionally preceded by a **rider**, one
//! key and value of the same tree written with the group (an agent's run
//! record beside the leaf update that reports it). Pure byte layout: reads
//! and writes nothing.
//!
//! A rider lets one plain insert carry both halves of an atomic change
//! instead of a sled batch (which writes its log buffer out twice per
//! batch): the group with its rider goes first, then the rider's own key;
//! sled recovers a prefix of the writes, so after a crash either both are
//! there or the group alone, and opening the outbox writes a rider whose
//! key is missing. Layout: `0xc1` (never used by MessagePack), the key's
//! length (u32, big-endian), the key, the value's length, the value, then
//! the group.

/// A group's value: the one event itself, or a MessagePack array of them
/// (`encoded` are the events' encodings, `bytes` their total length).
pub(super) fn encode_group(encoded: Vec<Vec<u8>>, bytes: usize) -> Vec<u8> {
    let mut encoded = encoded;
    if encoded.len() == 1 {
        return encoded.pop().unwrap_or_default();
    }
    let n = encoded.len();
    let mut v = Vec::with_capacity(bytes + 5);
    if n < 16 {
        v.push(0x90 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        v.push(0xdc);
        v.extend_from_slice(&n.to_be_bytes());
    } else {
        v.push(0xdd);
        v.extend_from_slice(&(n as u32).to_be_bytes());
    }
    for e in encoded {
        v.extend_from_slice(&e);
    }
    v
}

/// Whether a group is of several events (a MessagePack array; a single
/// event is a map or a string, never an array).
pub(super) fn is_group(v: &[u8]) -> bool {
    matches!(v.first(), Some(0x90..=0x9f | 0xdc | 0xdd))
}

/// How many events a group holds (from the array's header).
pub(super) fn group_len(v: &[u8]) -> u64 {
    match v {
        [b @ 0x90..=0x9f, ..] => u64::from(b & 0x0f),
        [0xdc, a, b, ..] => u64::from(u16::from_be_bytes([*a, *b])),
        [0xdd, a, b, c, d, ..] => u64::from(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => 1,
    }
}

/// The marker of a record with a rider.
const RIDER: u8 = 0xc1;

/// `group` with `key` = `value` riding in front of it.
pub(super) fn with_rider(key: &[u8], value: &[u8], group: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + key.len() + value.len() + group.len());
    v.push(RIDER);
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(&(value.len() as u32).to_be_bytes());
    v.extend_from_slice(value);
    v.extend_from_slice(group);
    v
}

/// A rider: (key, value).
pub(super) type Rider<'a> = (&'a [u8], &'a [u8]);

/// A stored record split into its rider, if any, and its group. A record
/// too short for the rider it announces is taken as all group (and fails
/// to decode there).
pub(super) fn split(v: &[u8]) -> (Option<Rider<'_>>, &[u8]) {
    fn take(v: &[u8]) -> Option<(&[u8], &[u8])> {
        let n = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
        let rest = v.get(4..)?;
        Some((rest.get(..n)?, rest.get(n..)?))
    }
    if v.first() != Some(&RIDER) {
        return (None, v);
    }
    let parsed = take(&v[1..]).and_then(|(k, rest)| take(rest).map(|(val, g)| ((k, val), g)));
    match parsed {
        Some((rider, g)) => (Some(rider), g),
        None => (None, v),
    }
}

/// The group of a stored record (without its rider).
pub(super) fn group(v: &[u8]) -> &[u8] {
    split(v).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_headers() {
        for n in [2usize, 15, 16, 255, 256, 70_000] {
            let v = encode_group(vec![vec![0xc0]; n], n);
            assert!(is_group(&v), "{n}");
            assert_eq!(group_len(&v), n as u64);
        }
        let one = encode_group(vec![vec![0x81, 0xa1, b'a', 0x01]], 4);
        assert!(!is_group(&one));
        assert_eq!(group_len(&one), 1);
    }

    #[test]
    fn a_rider_splits_off_and_leaves_the_group_as_it_was() {
        let g = encode_group(vec![vec![0xc0]; 3], 3);
        let v = with_rider(b"r\0k", b"value", &g);
        assert_eq!(split(&v), (Some((&b"r\0k"[..], &b"value"[..])), &g[..]));
        assert_eq!(group(&v), &g[..]);
        assert_eq!(group_len(group(&v)), 3);
        // Without a rider, the record is the group.
        assert_eq!(split(&g), (None, &g[..]));
        let one = vec![0x81, 0xa1, b'a', 0x01];
        assert_eq!(split(&one), (None, &one[..]));
        // Empty key or value.
        let v = with_rider(b"", b"", &one);
        assert_eq!(split(&v), (Some((&b""[..], &b""[..])), &one[..]));
        // Cut short: not taken as a rider.
        let v = with_rider(b"key", b"value", &one);
        let cut = &v[..7];
        assert_eq!(split(cut), (None, cut));
    }
}
