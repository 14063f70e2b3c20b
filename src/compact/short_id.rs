//! `ShortId`: the string type of account and customer ids, 16 bytes in place.
//!
//! Every account's id is held twice, in the partition's directory and in its customer's
//! list of accounts, and every customer's in its segment's table and in the partition's
//! numbering of customers (the directory points at a customer by number): at millions
//! of accounts, the size of an id is a large part of the memory an account costs. Ids
//! of up to 15 bytes (every AWS-style 12-digit account id, most customer ids) are kept
//! inline, so a lookup compares 16 bytes in place and a copy is a copy; longer ones
//! share one allocation behind a thin pointer, as `smol_str` does with its 24 bytes.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// An immutable string of any length, 16 bytes in place (see the module's documentation).
///
/// It hashes, compares and orders exactly as the `str` it holds, so maps keyed by it
/// are searched with a `&str`.
#[derive(Clone)]
pub struct ShortId(Repr);

/// Invariant: a string of up to [`ShortId::INLINE`] bytes is always `Inline`, with the
/// bytes past its length zero; a longer one is always `Heap`. So two ids are equal
/// exactly when their representations are (a `Heap` compares its text).
///
/// Every field is bytes, so an id is aligned to 1: a directory entry of an id and a
/// 4-byte customer number takes 20 bytes, not 24.
#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Inline { len: Len, bytes: [u8; ShortId::INLINE] },
    Heap(HeapText),
}

/// A long id's text: an `Arc<String>` held as its raw pointer (a thin pointer: an
/// `Arc<str>` would take 16 bytes), packed so that it asks for no alignment.
#[repr(C, packed)]
struct HeapText(std::ptr::NonNull<String>);

// SAFETY: a `HeapText` is an `Arc<String>` (see `new`, `clone` and `drop`), which may be
// sent and shared between threads.
unsafe impl Send for HeapText {}
// SAFETY: as for `Send`: shared `&HeapText`s only read the `String` through the `Arc`.
unsafe impl Sync for HeapText {}

impl HeapText {
    fn new(text: String) -> HeapText {
        let raw = Arc::into_raw(Arc::new(text)).cast_mut();
        HeapText(std::ptr::NonNull::new(raw).expect("an Arc is never null"))
    }

    fn ptr(&self) -> *const String {
        // A copy out of the packed field (no reference to it is ever made).
        let ptr = self.0;
        ptr.as_ptr()
    }

    fn as_str(&self) -> &str {
        // SAFETY: the pointer is from `Arc::into_raw`, and this value holds one of its
        // counts until it is dropped, so the `String` lives at least as long as `self`.
        unsafe { &*self.ptr() }
    }
}

impl Clone for HeapText {
    fn clone(&self) -> HeapText {
        // SAFETY: the pointer came from `Arc::into_raw` and its count is at least 1 (ours).
        unsafe { Arc::increment_strong_count(self.ptr()) };
        HeapText(std::ptr::NonNull::new(self.ptr().cast_mut()).expect("an Arc is never null"))
    }
}

impl Drop for HeapText {
    fn drop(&mut self) {
        // SAFETY: gives back the count this value held (see `clone` and `new`).
        drop(unsafe { Arc::from_raw(self.ptr()) });
    }
}

impl PartialEq for HeapText {
    fn eq(&self, other: &HeapText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HeapText {}

/// The length of an inline id. An enum of 16 values, so that the values it never takes
/// mark the `Heap` variant and the id needs no tag byte of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Len {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
    L13,
    L14,
    L15,
}

impl Len {
    const ALL: [Len; 16] = [
        Len::L0,
        Len::L1,
        Len::L2,
        Len::L3,
        Len::L4,
        Len::L5,
        Len::L6,
        Len::L7,
        Len::L8,
        Len::L9,
        Len::L10,
        Len::L11,
        Len::L12,
        Len::L13,
        Len::L14,
        Len::L15,
    ];
}

impl ShortId {
    /// The longest id kept inline.
    pub const INLINE: usize = 15;

    pub fn new(s: &str) -> ShortId {
        let len = s.len();
        if len <= Self::INLINE {
            let mut bytes = [0u8; Self::INLINE];
            bytes[..len].copy_from_slice(s.as_bytes());
            ShortId(Repr::Inline {
                len: Len::ALL[len],
                bytes,
            })
        } else {
            ShortId(Repr::Heap(HeapText::new(s.to_owned())))
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let bytes = &bytes[..*len as usize];
                // SAFETY: `bytes[..len]` is a copy of a whole `&str` (`new` is the only
                // constructor of `Inline`), so it is valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Heap(text) => text.as_str(),
        }
    }

    /// Whether the id is kept in place (no allocation of its own).
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl Default for ShortId {
    fn default() -> Self {
        ShortId::new("")
    }
}

impl Deref for ShortId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ShortId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ShortId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ShortId {
    fn eq(&self, other: &ShortId) -> bool {
        // The representation is canonical (see `Repr`): inline ids compare as 16 bytes.
        self.0 == other.0
    }
}

impl Eq for ShortId {}

impl PartialEq<str> for ShortId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<ShortId> for str {
    fn eq(&self, other: &ShortId) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<ShortId> for &str {
    fn eq(&self, other: &ShortId) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<String> for ShortId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl Ord for ShortId {
    fn cmp(&self, other: &ShortId) -> std::cmp::Ordering {
        cmp_as_str(self.as_str(), other.as_str())
    }
}

impl PartialOrd for ShortId {
    fn partial_cmp(&self, other: &ShortId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for ShortId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the `str`, so that maps keyed by ids are searched with a `&str`.
        self.as_str().hash(state);
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for ShortId {
    fn from(s: &str) -> ShortId {
        ShortId::new(s)
    }
}

impl From<&String> for ShortId {
    fn from(s: &String) -> ShortId {
        ShortId::new(s)
    }
}

impl From<String> for ShortId {
    fn from(s: String) -> ShortId {
        if s.len() <= Self::INLINE {
            ShortId::new(&s)
        } else {
            ShortId(Repr::Heap(HeapText::new(s)))
        }
    }
}

impl From<ShortId> for String {
    fn from(id: ShortId) -> String {
        id.as_str().to_owned()
    }
}

impl serde::Serialize for ShortId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ShortId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ShortId, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ShortId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ShortId, E> {
                Ok(ShortId::new(s))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<ShortId, E> {
                Ok(ShortId::from(s))
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<ShortId, E> {
                std::str::from_utf8(b)
                    .map(ShortId::new)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(b), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Orders ids exactly as `str` does, without a call to `memcmp` for ids of up
/// to 16 bytes (every AWS-style id): each is read as one big-endian 128-bit number,
/// zero-padded, and a tie goes to the shorter (a prefix comes first, as in `str`).
/// It is the comparison of the hot path's search for an account in its customer.
pub fn cmp_as_str(a: &str, b: &str) -> std::cmp::Ordering {
    fn word(s: &[u8]) -> u128 {
        let mut bytes = [0u8; 16];
        bytes[..s.len()].copy_from_slice(s);
        u128::from_be_bytes(bytes)
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() <= 16 && b.len() <= 16 {
        word(a).cmp(&word(b)).then(a.len().cmp(&b.len()))
    } else {
        a.cmp(b)
    }
}

#[cfg(test)]
mod tests {
    use super::ShortId;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    fn hash<T: Hash + ?Sized>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn an_id_takes_sixteen_bytes_and_none_more_in_an_option() {
        assert_eq!(std::mem::size_of::<ShortId>(), 16);
        assert_eq!(std::mem::size_of::<Option<ShortId>>(), 16);
        // Aligned to 1: with a 4-byte customer number, a directory entry takes 20 bytes.
        assert_eq!(std::mem::align_of::<ShortId>(), 1);
        assert_eq!(std::mem::size_of::<(ShortId, u32)>(), 20);
    }

    #[test]
    fn a_long_ids_text_is_shared_by_its_clones_and_freed_with_the_last() {
        use super::Repr;
        use std::sync::Arc;
        // Run under valgrind (`--features system-allocator`) this also shows that the
        // text is freed once, and only once.
        let text = "a-customer-id-longer-than-fifteen-bytes";
        let id = ShortId::new(text);
        assert!(!id.is_inline());
        let clones: Vec<ShortId> = (0..3).map(|_| id.clone()).collect();
        let Repr::Heap(heap) = &id.0 else { unreachable!() };
        let shared = heap.ptr();
        // SAFETY: a count is borrowed and given back at once, the id still holds its own.
        let count = unsafe {
            Arc::increment_strong_count(shared);
            let borrowed = Arc::from_raw(shared);
            Arc::strong_count(&borrowed)
        };
        assert_eq!(
            count,
            1 + 3 + 1,
            "the id, its clones, and the count borrowed here"
        );
        for c in &clones {
            let Repr::Heap(h) = &c.0 else { unreachable!() };
            assert_eq!(h.ptr(), shared);
            assert_eq!(c, &id);
            assert_eq!(c.as_str(), text);
        }
        // Equal texts in two allocations are equal ids.
        let other = ShortId::new(text);
        assert_eq!(other, id);
        drop(clones);
        assert_eq!(id.as_str(), text);
        // Across threads.
        let moved = id.clone();
        assert_eq!(
            std::thread::spawn(move || moved.as_str().len()).join().unwrap(),
            text.len()
        );
    }

    #[test]
    fn ids_of_every_length_keep_their_text_and_behave_as_str() {
        let texts = [
            "",
            "a",
            "123456789012",
            "cust-00000001",
            "123456789012345",  // 15: the longest inline
            "1234567890123456", // 16: the shortest on the heap
            "a-much-longer-customer-id-with-a-uuid-0f8e",
            "é€𝄞",
            "ünïcödé-äccount-ïd",
        ];
        for a in texts {
            let id = ShortId::new(a);
            assert_eq!(id.as_str(), a);
            assert_eq!(id.is_inline(), a.len() <= ShortId::INLINE, "{a:?}");
            assert_eq!(ShortId::from(a.to_owned()), id);
            assert_eq!(id.clone(), id);
            assert_eq!(hash(&id), hash(a), "hashes as its str");
            assert_eq!(format!("{id}"), a);
            assert_eq!(format!("{id:?}"), format!("{a:?}"));
            assert!(id == *a && a == id);
            for b in texts {
                let other = ShortId::new(b);
                assert_eq!(id == other, a == b, "{a:?} == {b:?}");
                assert_eq!(id.cmp(&other), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn ids_are_written_and_read_as_strings() {
        for a in ["123456789012", "a-much-longer-customer-id-with-a-uuid-0f8e"] {
            let id = ShortId::new(a);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, serde_json::to_string(a).unwrap());
            assert_eq!(serde_json::from_str::<ShortId>(&json).unwrap(), id);
            let packed = rmp_serde::to_vec(&id).unwrap();
            assert_eq!(
                packed,
                rmp_serde::to_vec(a).unwrap(),
                "snapshots keep their bytes"
            );
            assert_eq!(rmp_serde::from_slice::<ShortId>(&packed).unwrap(), id);
        }
    }
}
