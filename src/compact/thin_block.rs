//! [`ThinBlock`]: one heap allocation behind one thin pointer, holding a short list of
//! `M`s and after it either a list of `I`s or one `L`. It is the storage of an account's
//! usage (its meters' aggregates, then its event ids, sorted in place while few, or the
//! one large set they become), kept for millions of accounts: one word for an account
//! without usage, and for one with usage a single allocation with an 8-byte header, where
//! two vectors took 48 bytes in place and two allocations.
//!
//! This module owns the layout and nothing else: it knows no billing, and every `unsafe`
//! block of the account's storage is here, each with the reason it is sound.
//!
//! Layout, for `h` heads and a tail of capacity `c` items (or one large tail):
//!
//! ```text
//! [Header: 8 bytes][M; h][padding][I; c]    or    [Header][M; h][padding][L]
//! ```
//!
//! The heads are allocated exactly (they are added rarely: a meter's first event in the
//! period); the items grow by a quarter at a time, as small sets do everywhere here.

use std::alloc::{alloc, dealloc, handle_alloc_error, realloc, Layout};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

/// The counts at the start of every block.
#[repr(C)]
struct Header {
    /// How many `M`s, and how many there is room for.
    heads: u16,
    /// How many `I`s are in the tail (0 when the tail is an `L`).
    items: u16,
    /// How many `I`s there is room for.
    capacity: u16,
    /// Whether the tail is one `L`.
    large: bool,
}

/// What follows the heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TailForm {
    Items(usize),
    Large,
}

/// The tail of a block, to read.
#[derive(Debug)]
pub enum Tail<'a, I, L> {
    Items(&'a [I]),
    Large(&'a L),
}

/// The tail of a block, to change in place.
#[derive(Debug)]
pub enum TailMut<'a, I, L> {
    Items(&'a mut [I]),
    Large(&'a mut L),
}

/// A list of `M`s and a list of `I`s or one `L`, in one allocation (see the module's
/// documentation). Empty, it allocates nothing.
pub struct ThinBlock<M, I: Copy, L> {
    block: Option<NonNull<Header>>,
    /// Owns `M`s, `I`s and an `L` (for drop checking and auto traits).
    _owns: PhantomData<(M, I, L)>,
}

// SAFETY: a block owns its contents exclusively, as a `Vec` or a `Box` would; sending or
// sharing it sends or shares them.
unsafe impl<M: Send, I: Copy + Send, L: Send> Send for ThinBlock<M, I, L> {}
// SAFETY: as above; `&ThinBlock` gives only `&M`, `&I` and `&L`.
unsafe impl<M: Sync, I: Copy + Sync, L: Sync> Sync for ThinBlock<M, I, L> {}

const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

impl<M, I: Copy, L> ThinBlock<M, I, L> {
    /// The alignment of every block of this type.
    const ALIGN: usize = max(
        max(align_of::<Header>(), align_of::<M>()),
        max(align_of::<I>(), align_of::<L>()),
    );
    /// Where the heads start.
    const HEADS: usize = round_up(size_of::<Header>(), align_of::<M>());

    /// An empty block: no allocation.
    pub const fn new() -> Self {
        ThinBlock {
            block: None,
            _owns: PhantomData,
        }
    }

    /// A block of exactly `heads` and `items` (room for no more), allocated once.
    pub fn from_parts(heads: Vec<M>, items: &[I]) -> Self {
        let mut block = Self::new();
        if heads.is_empty() && items.is_empty() {
            return block;
        }
        assert!(
            heads.len() < usize::from(u16::MAX),
            "a block holds at most {} heads",
            u16::MAX
        );
        assert!(
            items.len() <= usize::from(u16::MAX),
            "a block holds at most {} items",
            u16::MAX
        );
        let (n, m) = (heads.len(), items.len());
        let raw = block.resize(n, TailForm::Items(m));
        let tail = Self::tail_at(n, TailForm::Items(m));
        // SAFETY: the new block has room for `n` heads at HEADS and `m` items at `tail`.
        // The heads are moved out of their vector (nothing here can panic), the items
        // copied; only then does the header count them, so the block is never read or
        // freed as holding more than it does.
        unsafe {
            let base = raw.as_ptr().cast::<u8>();
            let mut heads = std::mem::ManuallyDrop::new(heads);
            ptr::copy_nonoverlapping(heads.as_ptr(), base.add(Self::HEADS).cast::<M>(), n);
            heads.set_len(0);
            std::mem::ManuallyDrop::drop(&mut heads);
            ptr::copy_nonoverlapping(items.as_ptr(), base.add(tail).cast::<I>(), m);
            let h = &mut *raw.as_ptr();
            h.heads = n as u16;
            h.items = m as u16;
            h.capacity = m as u16;
        }
        block
    }

    /// Where the tail starts after `heads` heads (what every access computes: no
    /// `Layout` checks on the way).
    fn tail_at(heads: usize, tail: TailForm) -> usize {
        let end_of_heads = Self::HEADS + heads * size_of::<M>();
        match tail {
            TailForm::Items(_) => round_up(end_of_heads, align_of::<I>()),
            TailForm::Large => round_up(end_of_heads, align_of::<L>()),
        }
    }

    /// The layout of a block of `heads` heads and a `tail` form.
    fn layout(heads: usize, tail: TailForm) -> Layout {
        let size = match tail {
            TailForm::Items(capacity) => capacity * size_of::<I>(),
            TailForm::Large => size_of::<L>(),
        };
        let end = Self::tail_at(heads, tail) + size;
        Layout::from_size_align(round_up(end, Self::ALIGN), Self::ALIGN)
            .expect("a block's size is bounded by u16 counts")
    }

    fn header(&self) -> Option<&Header> {
        // SAFETY: a block starts with its initialised header and lives as long as `self`.
        self.block.map(|b| unsafe { b.as_ref() })
    }

    fn form(header: &Header) -> TailForm {
        if header.large {
            TailForm::Large
        } else {
            TailForm::Items(usize::from(header.capacity))
        }
    }

    /// The start of the block, or null.
    pub fn as_ptr(&self) -> *const u8 {
        self.block.map_or(ptr::null(), |b| b.as_ptr().cast_const().cast())
    }

    pub fn heads(&self) -> &[M] {
        match self.block {
            None => &[],
            // SAFETY: the block holds `heads` initialised `M`s from offset HEADS, aligned
            // for `M`, borrowed for as long as `self`.
            Some(b) => unsafe {
                let heads = usize::from(b.as_ref().heads);
                std::slice::from_raw_parts(b.as_ptr().cast::<u8>().add(Self::HEADS).cast::<M>(), heads)
            },
        }
    }

    pub fn heads_mut(&mut self) -> &mut [M] {
        match self.block {
            None => &mut [],
            // SAFETY: as in `heads`, borrowed mutably through `&mut self`.
            Some(b) => unsafe {
                let heads = usize::from(b.as_ref().heads);
                std::slice::from_raw_parts_mut(b.as_ptr().cast::<u8>().add(Self::HEADS).cast::<M>(), heads)
            },
        }
    }

    pub fn tail(&self) -> Tail<'_, I, L> {
        let Some(b) = self.block else {
            return Tail::Items(&[]);
        };
        // SAFETY: the header is initialised; the tail starts where `layout` says for
        // this many heads and this form, and holds `items` initialised `I`s or one `L`.
        unsafe {
            let h = b.as_ref();
            let at = Self::tail_at(usize::from(h.heads), Self::form(h));
            let tail = b.as_ptr().cast::<u8>().add(at);
            if h.large {
                Tail::Large(&*tail.cast::<L>())
            } else {
                Tail::Items(std::slice::from_raw_parts(tail.cast::<I>(), usize::from(h.items)))
            }
        }
    }

    pub fn tail_mut(&mut self) -> TailMut<'_, I, L> {
        let Some(b) = self.block else {
            return TailMut::Items(&mut []);
        };
        // SAFETY: as in `tail`, borrowed mutably through `&mut self`.
        unsafe {
            let h = b.as_ref();
            let at = Self::tail_at(usize::from(h.heads), Self::form(h));
            let tail = b.as_ptr().cast::<u8>().add(at);
            if h.large {
                TailMut::Large(&mut *tail.cast::<L>())
            } else {
                TailMut::Items(std::slice::from_raw_parts_mut(
                    tail.cast::<I>(),
                    usize::from(h.items),
                ))
            }
        }
    }

    /// Gives the block the layout of `heads` heads and a `tail` form, keeping its bytes
    /// up to the shorter of the two sizes; a new block gets a zeroed header. Returns
    /// the block. Nothing is moved within it: callers move the tail themselves.
    fn resize(&mut self, heads: usize, tail: TailForm) -> NonNull<Header> {
        let new = Self::layout(heads, tail);
        let raw = match self.header() {
            // SAFETY: the layout is non-zero (it holds the header); a fresh header is
            // written before anything reads it.
            None => unsafe {
                let raw = alloc(new);
                if !raw.is_null() {
                    raw.cast::<Header>().write(Header {
                        heads: 0,
                        items: 0,
                        capacity: 0,
                        large: false,
                    });
                }
                raw
            },
            Some(h) => {
                let old = Self::layout(usize::from(h.heads), Self::form(h));
                // SAFETY: the block was allocated with `old` (its header says so), and
                // both layouts share one alignment.
                unsafe { realloc(self.as_ptr().cast_mut(), old, new.size()) }
            }
        };
        let Some(block) = NonNull::new(raw.cast::<Header>()) else {
            handle_alloc_error(new)
        };
        self.block = Some(block);
        block
    }

    /// Inserts `head` at `at` (at most the number of heads), shifting the later ones.
    pub fn insert_head(&mut self, at: usize, head: M) {
        let (heads, form) = self
            .header()
            .map_or((0, TailForm::Items(0)), |h| (usize::from(h.heads), Self::form(h)));
        assert!(at <= heads, "a head inserted at {at} of {heads}");
        assert!(
            heads < usize::from(u16::MAX),
            "a block holds at most {} heads",
            u16::MAX
        );
        let old_tail = Self::tail_at(heads, form);
        let new_tail = Self::tail_at(heads + 1, form);
        let tail_bytes = match (form, self.header()) {
            (TailForm::Large, _) => size_of::<L>(),
            (TailForm::Items(_), h) => h.map_or(0, |h| usize::from(h.items)) * size_of::<I>(),
        };
        let block = self.resize(heads + 1, form);
        // SAFETY: the block now has room for `heads + 1` heads and the tail after them.
        // The tail's initialised bytes move from where they were to where they now
        // belong (later: one more head), then the heads from `at` move one place on,
        // and `head` is written into the gap. The regions may overlap: `ptr::copy`.
        unsafe {
            let base = block.as_ptr().cast::<u8>();
            ptr::copy(base.add(old_tail), base.add(new_tail), tail_bytes);
            let first = base.add(Self::HEADS).cast::<M>();
            ptr::copy(first.add(at), first.add(at + 1), heads - at);
            first.add(at).write(head);
            (*block.as_ptr()).heads += 1;
        }
    }

    /// Inserts `item` at `at` (at most the number of items), shifting the later ones.
    /// A full tail grows by a quarter, at least one. Panics if the tail is an `L`.
    pub fn insert_item(&mut self, at: usize, item: I) {
        let (heads, items, capacity) = match self.header() {
            None => (0, 0, 0),
            Some(h) => {
                assert!(
                    !h.large,
                    "an item inserted into a block whose tail is one large value"
                );
                (
                    usize::from(h.heads),
                    usize::from(h.items),
                    usize::from(h.capacity),
                )
            }
        };
        assert!(at <= items, "an item inserted at {at} of {items}");
        let mut block = match self.block {
            Some(block) if items < capacity => block,
            _ => {
                let grown = (capacity + (capacity / 4).max(1)).min(usize::from(u16::MAX));
                assert!(grown > items, "a block holds at most {} items", u16::MAX);
                let block = self.resize(heads, TailForm::Items(grown));
                // SAFETY: `resize` returned the live block; its header is initialised.
                unsafe { (*block.as_ptr()).capacity = grown as u16 };
                block
            }
        };
        let tail = Self::tail_at(heads, TailForm::Items(0));
        // SAFETY: the tail has room for one more item; the items from `at` move one
        // place on (overlapping: `ptr::copy`) and `item` fills the gap.
        unsafe {
            let first = block.as_ptr().cast::<u8>().add(tail).cast::<I>();
            ptr::copy(first.add(at), first.add(at + 1), items - at);
            first.add(at).write(item);
            block.as_mut().items += 1;
        }
    }

    /// Takes the item at `at` out, shifting the later ones back (the room stays).
    /// Panics if there is no such item.
    pub fn remove_item(&mut self, at: usize) -> I {
        let TailMut::Items(items) = self.tail_mut() else {
            panic!("an item removed from a block whose tail is one large value")
        };
        let item = items[at];
        items.copy_within(at + 1.., at);
        // SAFETY: `tail_mut` found a block (there was an item); its header is live.
        unsafe { (*self.block.expect("a block with items").as_ptr()).items -= 1 };
        item
    }

    /// Makes the tail exactly `items` (room for as many, no more), dropping a large one.
    pub fn set_items(&mut self, items: &[I]) {
        assert!(
            items.len() <= usize::from(u16::MAX),
            "a block holds at most {} items",
            u16::MAX
        );
        if self.block.is_none() && items.is_empty() {
            return;
        }
        self.drop_large();
        let heads = self.heads().len();
        let block = self.resize(heads, TailForm::Items(items.len()));
        let tail = Self::tail_at(heads, TailForm::Items(0));
        // SAFETY: the block has room for `items.len()` items at `tail`; they are `Copy`.
        unsafe {
            ptr::copy_nonoverlapping(
                items.as_ptr(),
                block.as_ptr().cast::<u8>().add(tail).cast::<I>(),
                items.len(),
            );
            let h = &mut *block.as_ptr();
            h.items = items.len() as u16;
            h.capacity = items.len() as u16;
        }
    }

    /// Makes the tail `large`, in place of the items or the large value there.
    pub fn set_large(&mut self, large: L) {
        if let TailMut::Large(kept) = self.tail_mut() {
            *kept = large;
            return;
        }
        let heads = self.heads().len();
        let block = self.resize(heads, TailForm::Large);
        let tail = Self::tail_at(heads, TailForm::Large);
        // SAFETY: the block has room for one `L` at `tail`; the header says so once it
        // is written (the items before it are `Copy`: nothing to drop).
        unsafe {
            block.as_ptr().cast::<u8>().add(tail).cast::<L>().write(large);
            let h = &mut *block.as_ptr();
            h.items = 0;
            h.capacity = 0;
            h.large = true;
        }
    }

    /// Drops a large tail, leaving an empty list of items in its place (and the block
    /// sized for that).
    fn drop_large(&mut self) {
        let Some(block) = self.block else { return };
        // SAFETY: the header is live and, when `large`, an initialised `L` sits at the
        // tail. The header is changed before the `L` is dropped, so a panic in its drop
        // leaks it instead of dropping it twice.
        unsafe {
            if !block.as_ref().large {
                return;
            }
            let heads = usize::from(block.as_ref().heads);
            let tail = Self::tail_at(heads, TailForm::Large);
            let large = block.as_ptr().cast::<u8>().add(tail).cast::<L>().read();
            // The block keeps its size until `resize` below, which reads the header:
            // shrink it while the header still says `large`.
            self.resize(heads, TailForm::Items(0));
            let h = &mut *self.block.expect("resized").as_ptr();
            h.large = false;
            h.items = 0;
            h.capacity = 0;
            drop(large);
        }
    }

    /// Empties the tail: no items and no room for any (a large tail is dropped).
    pub fn clear_tail(&mut self) {
        self.set_items(&[]);
    }
}

impl<M, I: Copy, L> Default for ThinBlock<M, I, L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M, I: Copy, L> Drop for ThinBlock<M, I, L> {
    fn drop(&mut self) {
        let Some(block) = self.block.take() else { return };
        // SAFETY: the block is live and owned; its header gives how many heads are
        // initialised and what the tail holds, and the layout it was allocated with.
        unsafe {
            let h = block.as_ref();
            let (heads, form) = (usize::from(h.heads), Self::form(h));
            let (tail, layout) = (Self::tail_at(heads, form), Self::layout(heads, form));
            let base = block.as_ptr().cast::<u8>();
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(
                base.add(Self::HEADS).cast::<M>(),
                usize::from(h.heads),
            ));
            if h.large {
                ptr::drop_in_place(base.add(tail).cast::<L>());
            }
            dealloc(base, layout);
        }
    }
}

impl<M: Clone, I: Copy, L: Clone> Clone for ThinBlock<M, I, L> {
    fn clone(&self) -> Self {
        let heads = self.heads().to_vec();
        match self.tail() {
            Tail::Items(items) => Self::from_parts(heads, items),
            Tail::Large(large) => {
                let mut copy = Self::from_parts(heads, &[]);
                copy.set_large(large.clone());
                copy
            }
        }
    }
}

impl<M: std::fmt::Debug, I: Copy + std::fmt::Debug, L: std::fmt::Debug> std::fmt::Debug
    for ThinBlock<M, I, L>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThinBlock")
            .field("heads", &self.heads())
            .field("tail", &self.tail())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::rc::Rc;

    type Block = ThinBlock<(u16, Rc<u64>), [u32; 3], Rc<Vec<u64>>>;

    #[test]
    fn an_empty_block_is_one_word_and_allocates_nothing() {
        assert_eq!(size_of::<Block>(), 8);
        let b = Block::new();
        assert!(b.as_ptr().is_null());
        assert!(b.heads().is_empty());
        assert!(matches!(b.tail(), Tail::Items([])));
    }

    #[test]
    fn heads_and_items_keep_their_places_whatever_is_inserted_around_them() {
        let mut b = Block::new();
        b.insert_item(0, [1, 1, 1]);
        b.insert_head(0, (5, Rc::new(50)));
        b.insert_item(0, [0, 0, 0]);
        b.insert_head(0, (3, Rc::new(30)));
        b.insert_item(2, [2, 2, 2]);
        b.insert_head(1, (4, Rc::new(40)));
        let heads: Vec<(u16, u64)> = b.heads().iter().map(|(k, v)| (*k, **v)).collect();
        assert_eq!(heads, [(3, 30), (4, 40), (5, 50)]);
        let Tail::Items(items) = b.tail() else { panic!() };
        assert_eq!(items, [[0; 3], [1; 3], [2; 3]]);
        assert_eq!(b.remove_item(1), [1; 3]);
        let Tail::Items(items) = b.tail() else { panic!() };
        assert_eq!(items, [[0; 3], [2; 3]]);
    }

    #[test]
    fn every_head_and_large_tail_is_dropped_once() {
        let head = Rc::new(7u64);
        let large = Rc::new(vec![1, 2, 3]);
        {
            let mut b = Block::new();
            b.insert_head(0, (1, head.clone()));
            b.insert_item(0, [9; 3]);
            b.set_large(large.clone());
            b.insert_head(1, (2, head.clone()));
            assert_eq!(Rc::strong_count(&head), 3);
            assert_eq!(Rc::strong_count(&large), 2);
            let copy = b.clone();
            assert_eq!(Rc::strong_count(&head), 5);
            assert_eq!(Rc::strong_count(&large), 3);
            let Tail::Large(l) = copy.tail() else { panic!() };
            assert_eq!(**l, [1, 2, 3]);
            drop(copy);
            b.set_large(Rc::new(vec![]));
            assert_eq!(
                Rc::strong_count(&large),
                1,
                "replaced in place: the old one dropped"
            );
            b.clear_tail();
            assert!(matches!(b.tail(), Tail::Items([])));
            assert_eq!(b.heads().len(), 2);
        }
        assert_eq!(Rc::strong_count(&head), 1);
    }

    #[test]
    fn items_grow_by_a_quarter() {
        let mut b = Block::new();
        let mut capacities = vec![];
        for i in 0..40u32 {
            b.insert_item(i as usize, [i; 3]);
            let c = b.header().unwrap().capacity;
            if capacities.last() != Some(&c) {
                capacities.push(c);
            }
        }
        assert_eq!(
            capacities,
            [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 18, 22, 27, 33, 41]
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Head(usize, u16),
        Item(usize, u32),
        Remove(usize),
        Large(u64),
        Items(Vec<u32>),
        Clear,
        Clone,
        Rebuild,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<usize>(), any::<u16>()).prop_map(|(a, k)| Op::Head(a, k)),
            6 => (any::<usize>(), any::<u32>()).prop_map(|(a, v)| Op::Item(a, v)),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => any::<u64>().prop_map(Op::Large),
            1 => proptest::collection::vec(any::<u32>(), 0..20).prop_map(Op::Items),
            1 => Just(Op::Clear),
            1 => Just(Op::Clone),
            1 => Just(Op::Rebuild),
        ]
    }

    proptest! {
        /// The block reads back exactly what a pair of vectors (and an optional large
        /// value) would hold after the same operations, and drops what it holds.
        #[test]
        fn a_block_agrees_with_plain_vectors(ops in proptest::collection::vec(op(), 0..80)) {
            let token = Rc::new(0u64);
            let mut b = Block::new();
            let mut heads: Vec<u16> = vec![];
            let mut items: Vec<[u32; 3]> = vec![];
            let mut large: Option<Vec<u64>> = None;
            for op in ops {
                match op {
                    Op::Head(at, k) if heads.len() < 100 => {
                        let at = at % (heads.len() + 1);
                        heads.insert(at, k);
                        b.insert_head(at, (k, token.clone()));
                    }
                    Op::Item(at, v) if large.is_none() => {
                        let at = at % (items.len() + 1);
                        items.insert(at, [v, !v, v ^ 7]);
                        b.insert_item(at, [v, !v, v ^ 7]);
                    }
                    Op::Remove(at) if large.is_none() && !items.is_empty() => {
                        let at = at % items.len();
                        prop_assert_eq!(b.remove_item(at), items.remove(at));
                    }
                    Op::Large(v) => {
                        items.clear();
                        large = Some(vec![v; 3]);
                        b.set_large(Rc::new(vec![v; 3]));
                    }
                    Op::Items(vs) => {
                        large = None;
                        items = vs.iter().map(|&v| [v, 0, v]).collect();
                        b.set_items(&items);
                    }
                    Op::Clear => {
                        large = None;
                        items.clear();
                        b.clear_tail();
                    }
                    Op::Clone => b = b.clone(),
                    Op::Rebuild => {
                        large = None;
                        let kept: Vec<(u16, Rc<u64>)> = b.heads().to_vec();
                        b = Block::from_parts(kept, &items);
                    }
                    _ => {}
                }
                let kept: Vec<u16> = b.heads().iter().map(|h| h.0).collect();
                prop_assert_eq!(&kept, &heads);
                match (b.tail(), &large) {
                    (Tail::Items(got), None) => prop_assert_eq!(got, &items[..]),
                    (Tail::Large(got), Some(want)) => prop_assert_eq!(&***got, &want[..]),
                    (got, want) => prop_assert!(false, "tail {:?}, want {:?}", got, want),
                }
                prop_assert_eq!(Rc::strong_count(&token), heads.len() + 1);
            }
            drop(b);
            prop_assert_eq!(Rc::strong_count(&token), 1);
        }
    }
}
