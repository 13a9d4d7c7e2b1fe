//! The capability spaces and the derivation tree behind them.
//!
//! Nodes live in one arena (a `Vec` with an intrusive free list), linked to their parent, first
//! child and both siblings, so a node can be unlinked in O(1) and a subtree is walked without a
//! stack of its own. Each space is a `Vec` of slots holding node indices, and each node records
//! its space and selector, so a lookup is two indexings and removing a node clears its slot.

use alloc::vec::Vec;
use core::mem;

use abi::Rights;

use crate::{CapError, Removed, SpaceId};

mod check;

/// Index of a node in the arena.
type NodeId = u32;

/// Most spaces that can exist at once: a [`SpaceId`] keeps the index in its low 16 bits and a
/// generation in its high 16 bits.
pub const MAX_SPACES: usize = 1 << INDEX_BITS;

const INDEX_BITS: u32 = 16;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;

struct Node<O> {
    object: O,
    rights: Rights,
    /// The object's original capability (a root of the tree).
    original: bool,
    space: SpaceId,
    sel: u64,
    parent: Option<NodeId>,
    first_child: Option<NodeId>,
    prev_sibling: Option<NodeId>,
    next_sibling: Option<NodeId>,
}

enum Entry<O> {
    Used(Node<O>),
    Free { next: Option<NodeId> },
}

struct Space {
    slots: Vec<Option<NodeId>>,
    /// Occupied slots.
    count: usize,
}

enum SpaceState {
    Live(Space),
    Free {
        next: Option<u16>,
    },
    /// Every generation of this index has been used; it is never handed out again, so that no
    /// id can alias an older one.
    Retired,
}

struct SpaceEntry {
    generation: u16,
    state: SpaceState,
}

/// Every capability space of the machine and the derivation tree that links their
/// capabilities. `O` is the kernel's object handle.
pub struct CapSystem<O> {
    nodes: Vec<Entry<O>>,
    free_node: Option<NodeId>,
    nodes_in_use: usize,
    max_nodes: usize,
    spaces: Vec<SpaceEntry>,
    free_space: Option<u16>,
}

const fn space_index(id: SpaceId) -> usize {
    (id & INDEX_MASK) as usize
}

const fn space_generation(id: SpaceId) -> u16 {
    (id >> INDEX_BITS) as u16
}

const fn space_id(index: u16, generation: u16) -> SpaceId {
    ((generation as u32) << INDEX_BITS) | index as u32
}

impl<O: Clone + PartialEq + core::fmt::Debug> CapSystem<O> {
    /// An empty system that holds at most `max_nodes` capabilities at once (at most
    /// `u32::MAX`), summed over all spaces. Memory is taken as nodes are used, not up front.
    pub fn new(max_nodes: usize) -> Self {
        Self {
            nodes: Vec::new(),
            free_node: None,
            nodes_in_use: 0,
            max_nodes: max_nodes.min(NodeId::MAX as usize),
            spaces: Vec::new(),
            free_space: None,
        }
    }

    /// A new, empty space with selectors `0..slots`.
    ///
    /// Fails with [`CapError::TooManySpaces`] if [`MAX_SPACES`] spaces exist (or every free id
    /// has been retired after 65536 generations) or the slot table cannot be allocated.
    pub fn create_space(&mut self, slots: usize) -> Result<SpaceId, CapError> {
        let mut table = Vec::new();
        table
            .try_reserve_exact(slots)
            .map_err(|_| CapError::TooManySpaces)?;
        table.resize(slots, None);
        let space = Space {
            slots: table,
            count: 0,
        };

        if let Some(index) = self.free_space {
            let entry = self
                .spaces
                .get_mut(usize::from(index))
                .ok_or(CapError::TooManySpaces)?;
            let SpaceState::Free { next } = entry.state else {
                return Err(CapError::TooManySpaces);
            };
            self.free_space = next;
            entry.state = SpaceState::Live(space);
            return Ok(space_id(index, entry.generation));
        }
        let index = u16::try_from(self.spaces.len()).map_err(|_| CapError::TooManySpaces)?;
        self.spaces
            .try_reserve(1)
            .map_err(|_| CapError::TooManySpaces)?;
        self.spaces.push(SpaceEntry {
            generation: 0,
            state: SpaceState::Live(space),
        });
        Ok(space_id(index, 0))
    }

    /// Removes every capability in the space, together with everything derived from each, in
    /// all spaces, and then the space itself; its id is never valid again. Calls `removed` for
    /// each removed capability, descendants before their ancestors.
    pub fn destroy_space(
        &mut self,
        space: SpaceId,
        removed: &mut dyn FnMut(Removed<O>),
    ) -> Result<(), CapError> {
        let slots = self.space(space)?.slots.len();
        for index in 0..slots {
            let Some(node) = self.space(space)?.slots.get(index).copied().flatten() else {
                continue;
            };
            self.remove_subtree(node, true, removed);
        }
        let index = space_index(space);
        let free_space = self.free_space;
        let entry = self.spaces.get_mut(index).ok_or(CapError::BadSpace)?;
        match entry.generation.checked_add(1) {
            Some(generation) => {
                entry.generation = generation;
                entry.state = SpaceState::Free { next: free_space };
                // `index` came from a valid id, so it fits in 16 bits.
                self.free_space = u16::try_from(index).ok();
            }
            None => entry.state = SpaceState::Retired,
        }
        Ok(())
    }

    /// Puts the original capability of a new object at `sel`. Rights bits that
    /// [`Rights::ALL`] does not define are dropped.
    pub fn insert_original(
        &mut self,
        space: SpaceId,
        sel: u64,
        object: O,
        rights: Rights,
    ) -> Result<(), CapError> {
        let index = self.free_slot(space, sel)?;
        let node = self.alloc_node(Node {
            object,
            rights: rights.intersection(Rights::ALL),
            original: true,
            space,
            sel,
            parent: None,
            first_child: None,
            prev_sibling: None,
            next_sibling: None,
        })?;
        self.occupy(space, index, node);
        Ok(())
    }

    /// The object and rights at `sel`.
    pub fn get(&self, space: SpaceId, sel: u64) -> Result<(&O, Rights), CapError> {
        let node = self.node(self.find(space, sel)?).ok_or(CapError::Empty)?;
        Ok((&node.object, node.rights))
    }

    /// The object at `sel` if the capability holds every right in `needed`, else
    /// [`CapError::NoRights`].
    pub fn lookup(&self, space: SpaceId, sel: u64, needed: Rights) -> Result<&O, CapError> {
        let (object, rights) = self.get(space, sel)?;
        if rights.contains(needed) {
            Ok(object)
        } else {
            Err(CapError::NoRights)
        }
    }

    /// Copies the capability at `src_sel` into `dst_space` at `dst_sel` with `rights`, as a
    /// child of the source in the derivation tree.
    ///
    /// The source must hold [`Rights::GRANT`] and every right in `rights` (else
    /// [`CapError::NoRights`]) and the destination must be empty (else
    /// [`CapError::SelectorInUse`]). Errors are reported in this order: source space, source
    /// selector, destination space, rights, destination selector, arena capacity. Nothing
    /// changes unless everything checks out.
    pub fn delegate(
        &mut self,
        src_space: SpaceId,
        src_sel: u64,
        dst_space: SpaceId,
        dst_sel: u64,
        rights: Rights,
    ) -> Result<(), CapError> {
        let object = self.get(src_space, src_sel)?.0.clone();
        self.derive(src_space, src_sel, dst_space, dst_sel, object, rights)
    }

    /// Like [`CapSystem::delegate`], but the new capability names `object` (a narrower view of
    /// the source's object, such as a sub-range of a memory capability; the caller checks that it
    /// is one). It is a child of the source, so revoking the source removes it.
    pub fn derive(
        &mut self,
        src_space: SpaceId,
        src_sel: u64,
        dst_space: SpaceId,
        dst_sel: u64,
        object: O,
        rights: Rights,
    ) -> Result<(), CapError> {
        let src = self.find(src_space, src_sel)?;
        self.space(dst_space)?;
        let src_rights = self.node(src).ok_or(CapError::Empty)?.rights;
        if !src_rights.contains(Rights::GRANT) || !src_rights.contains(rights) {
            return Err(CapError::NoRights);
        }
        let index = self.free_slot(dst_space, dst_sel)?;
        let first_sibling = self.node(src).and_then(|n| n.first_child);
        let node = self.alloc_node(Node {
            object,
            rights,
            original: false,
            space: dst_space,
            sel: dst_sel,
            parent: Some(src),
            first_child: None,
            prev_sibling: None,
            next_sibling: first_sibling,
        })?;
        if let Some(sibling) = first_sibling.and_then(|s| self.node_mut(s)) {
            sibling.prev_sibling = Some(node);
        }
        if let Some(parent) = self.node_mut(src) {
            parent.first_child = Some(node);
        }
        self.occupy(dst_space, index, node);
        Ok(())
    }

    /// Removes every capability derived from the one at `sel` (all generations, in all spaces)
    /// and, with `include_self`, that one too. Returns how many were removed and calls `removed`
    /// for each, descendants before their ancestors.
    pub fn revoke(
        &mut self,
        space: SpaceId,
        sel: u64,
        include_self: bool,
        removed: &mut dyn FnMut(Removed<O>),
    ) -> Result<usize, CapError> {
        let node = self.find(space, sel)?;
        Ok(self.remove_subtree(node, include_self, removed))
    }

    /// Number of capabilities in a space.
    pub fn count(&self, space: SpaceId) -> Result<usize, CapError> {
        Ok(self.space(space)?.count)
    }

    /// Number of selectors of a space.
    pub fn slots(&self, space: SpaceId) -> Result<usize, CapError> {
        Ok(self.space(space)?.slots.len())
    }

    /// Capabilities in use, summed over all spaces.
    pub fn nodes_in_use(&self) -> usize {
        self.nodes_in_use
    }

    /// Where the capability at `sel` was delegated from: `None` for an original capability.
    pub fn parent(&self, space: SpaceId, sel: u64) -> Result<Option<(SpaceId, u64)>, CapError> {
        let node = self.node(self.find(space, sel)?).ok_or(CapError::Empty)?;
        Ok(node
            .parent
            .and_then(|p| self.node(p))
            .map(|p| (p.space, p.sel)))
    }

    /// Every capability of a space as (selector, object, rights), in selector order; nothing
    /// for a space that does not exist. For debugging and tests.
    pub fn iter_space(&self, space: SpaceId) -> impl Iterator<Item = (u64, &O, Rights)> + '_ {
        let slots = self.space(space).map_or(&[][..], |s| s.slots.as_slice());
        slots
            .iter()
            .filter_map(move |slot| self.node((*slot)?))
            .map(|n| (n.sel, &n.object, n.rights))
    }

    fn space(&self, id: SpaceId) -> Result<&Space, CapError> {
        match self.spaces.get(space_index(id)) {
            Some(SpaceEntry {
                generation,
                state: SpaceState::Live(space),
            }) if *generation == space_generation(id) => Ok(space),
            _ => Err(CapError::BadSpace),
        }
    }

    fn space_mut(&mut self, id: SpaceId) -> Result<&mut Space, CapError> {
        match self.spaces.get_mut(space_index(id)) {
            Some(SpaceEntry {
                generation,
                state: SpaceState::Live(space),
            }) if *generation == space_generation(id) => Ok(space),
            _ => Err(CapError::BadSpace),
        }
    }

    fn node(&self, id: NodeId) -> Option<&Node<O>> {
        match self.nodes.get(id as usize) {
            Some(Entry::Used(node)) => Some(node),
            _ => None,
        }
    }

    fn node_mut(&mut self, id: NodeId) -> Option<&mut Node<O>> {
        match self.nodes.get_mut(id as usize) {
            Some(Entry::Used(node)) => Some(node),
            _ => None,
        }
    }

    /// The slot index of `sel` in `space`.
    fn slot_index(space: &Space, sel: u64) -> Result<usize, CapError> {
        usize::try_from(sel)
            .ok()
            .filter(|&i| i < space.slots.len())
            .ok_or(CapError::BadSelector)
    }

    /// The node at `sel`.
    fn find(&self, space: SpaceId, sel: u64) -> Result<NodeId, CapError> {
        let space = self.space(space)?;
        let index = Self::slot_index(space, sel)?;
        space
            .slots
            .get(index)
            .copied()
            .flatten()
            .ok_or(CapError::Empty)
    }

    /// The slot index of `sel` if it is in range and empty.
    fn free_slot(&self, space: SpaceId, sel: u64) -> Result<usize, CapError> {
        let space = self.space(space)?;
        let index = Self::slot_index(space, sel)?;
        match space.slots.get(index) {
            Some(None) => Ok(index),
            _ => Err(CapError::SelectorInUse),
        }
    }

    /// Puts `node` in the arena. The last fallible step of every insertion.
    fn alloc_node(&mut self, node: Node<O>) -> Result<NodeId, CapError> {
        if self.nodes_in_use >= self.max_nodes {
            return Err(CapError::TooManyCapabilities);
        }
        let id = match self.free_node {
            Some(id) => {
                let entry = self
                    .nodes
                    .get_mut(id as usize)
                    .ok_or(CapError::TooManyCapabilities)?;
                let Entry::Free { next } = *entry else {
                    return Err(CapError::TooManyCapabilities);
                };
                self.free_node = next;
                *entry = Entry::Used(node);
                id
            }
            None => {
                let id = NodeId::try_from(self.nodes.len())
                    .map_err(|_| CapError::TooManyCapabilities)?;
                self.nodes
                    .try_reserve(1)
                    .map_err(|_| CapError::TooManyCapabilities)?;
                self.nodes.push(Entry::Used(node));
                id
            }
        };
        self.nodes_in_use += 1;
        Ok(id)
    }

    /// Records `node` in the (checked, empty) slot `index` of `space`.
    fn occupy(&mut self, space: SpaceId, index: usize, node: NodeId) {
        if let Ok(space) = self.space_mut(space) {
            if let Some(slot) = space.slots.get_mut(index) {
                *slot = Some(node);
                space.count += 1;
            }
        }
    }

    /// Removes the descendants of `root` and, with `include_self`, `root`; returns how many.
    ///
    /// Post-order without a stack: go down first-child links to a leaf, remove it, step back to
    /// its parent and repeat. Every edge is walked down once and up once.
    fn remove_subtree(
        &mut self,
        root: NodeId,
        include_self: bool,
        removed: &mut dyn FnMut(Removed<O>),
    ) -> usize {
        let mut count = 0;
        let mut at = root;
        while let Some(node) = self.node(at) {
            if let Some(child) = node.first_child {
                at = child;
                continue;
            }
            if at == root {
                break;
            }
            let parent = node.parent;
            if self.remove_leaf(at, removed) {
                count += 1;
            }
            match parent {
                Some(parent) => at = parent,
                None => break,
            }
        }
        if include_self && self.remove_leaf(root, removed) {
            count += 1;
        }
        count
    }

    /// Unlinks a node without children, empties its slot, frees it and reports it. Returns
    /// whether it did (false for a free node or one that still has children).
    fn remove_leaf(&mut self, id: NodeId, removed: &mut dyn FnMut(Removed<O>)) -> bool {
        let free_node = self.free_node;
        let Some(entry) = self.nodes.get_mut(id as usize) else {
            return false;
        };
        if !matches!(entry, Entry::Used(n) if n.first_child.is_none()) {
            return false;
        }
        let Entry::Used(node) = mem::replace(entry, Entry::Free { next: free_node }) else {
            return false;
        };
        self.free_node = Some(id);
        self.nodes_in_use = self.nodes_in_use.saturating_sub(1);

        match node.prev_sibling {
            Some(prev) => {
                if let Some(prev) = self.node_mut(prev) {
                    prev.next_sibling = node.next_sibling;
                }
            }
            None => {
                if let Some(parent) = node.parent.and_then(|p| self.node_mut(p)) {
                    parent.first_child = node.next_sibling;
                }
            }
        }
        if let Some(next) = node.next_sibling.and_then(|n| self.node_mut(n)) {
            next.prev_sibling = node.prev_sibling;
        }
        if let Ok(space) = self.space_mut(node.space) {
            let slot = usize::try_from(node.sel)
                .ok()
                .and_then(|i| space.slots.get_mut(i));
            if let Some(slot @ Some(_)) = slot {
                *slot = None;
                space.count = space.count.saturating_sub(1);
            }
        }
        removed(Removed {
            space: node.space,
            sel: node.sel,
            object: node.object,
            original: node.original,
        });
        true
    }
}
