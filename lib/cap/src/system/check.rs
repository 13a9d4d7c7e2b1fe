//! A self-check of the arena, the tree links and the space tables.

use super::{space_id, CapSystem, Entry, NodeId, SpaceState};

impl<O: Clone + PartialEq + core::fmt::Debug> CapSystem<O> {
    /// Checks the internal links: slots and nodes point at each other, sibling lists are
    /// doubly linked, every node lies below an original, and the counters match. O(nodes +
    /// slots); for tests and kernel self-checks.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut used = 0usize;
        for (i, entry) in self.nodes.iter().enumerate() {
            let Entry::Used(node) = entry else { continue };
            used += 1;
            let id = NodeId::try_from(i).map_err(|_| "arena index too large")?;
            if self.find(node.space, node.sel) != Ok(id) {
                return Err("node's slot does not point at it");
            }
            if node.original != node.parent.is_none() {
                return Err("original flag disagrees with parent link");
            }
            match node.prev_sibling {
                Some(prev) => {
                    let prev = self.node(prev).ok_or("dangling prev link")?;
                    if prev.next_sibling != Some(id) || prev.parent != node.parent {
                        return Err("sibling links disagree");
                    }
                }
                None => {
                    if let Some(parent) = node.parent {
                        let parent = self.node(parent).ok_or("dangling parent link")?;
                        if parent.first_child != Some(id) {
                            return Err("first child not linked from its parent");
                        }
                    }
                }
            }
            if let Some(next) = node.next_sibling {
                if self.node(next).ok_or("dangling next link")?.prev_sibling != Some(id) {
                    return Err("sibling links disagree");
                }
            }
            if let Some(child) = node.first_child {
                if self.node(child).ok_or("dangling child link")?.parent != Some(id) {
                    return Err("child does not point at its parent");
                }
            }
        }
        if used != self.nodes_in_use {
            return Err("nodes_in_use is wrong");
        }
        if self.reachable_from_originals()? != used {
            return Err("a node is not below an original (cycle in parent links)");
        }
        let mut free = 0usize;
        let mut next = self.free_node;
        while let Some(f) = next {
            free += 1;
            if free > self.nodes.len() {
                return Err("cycle in free list");
            }
            match self.nodes.get(f as usize) {
                Some(Entry::Free { next: n }) => next = *n,
                _ => return Err("free list names a used node"),
            }
        }
        if used + free != self.nodes.len() {
            return Err("free list misses free nodes");
        }
        for (index, entry) in self.spaces.iter().enumerate() {
            let SpaceState::Live(space) = &entry.state else {
                continue;
            };
            let index = u16::try_from(index).map_err(|_| "space index too large")?;
            let this = space_id(index, entry.generation);
            let occupied = space.slots.iter().filter(|s| s.is_some()).count();
            if occupied != space.count {
                return Err("space count is wrong");
            }
            for (sel, slot) in space.slots.iter().enumerate() {
                let Some(id) = slot else { continue };
                let node = self.node(*id).ok_or("slot names a free node")?;
                if node.sel != sel as u64 || node.space != this {
                    return Err("slot's node records another place");
                }
            }
        }
        Ok(())
    }

    /// Number of nodes reached by walking down from every original, without recursion. Fails
    /// if the walk takes more steps than a forest of this size can need (a cycle).
    fn reachable_from_originals(&self) -> Result<usize, &'static str> {
        let limit = self.nodes.len().saturating_mul(4).saturating_add(4);
        let mut steps = 0usize;
        let mut step = || {
            steps += 1;
            if steps > limit {
                Err("cycle in tree links")
            } else {
                Ok(())
            }
        };
        let mut reached = 0usize;
        for (i, entry) in self.nodes.iter().enumerate() {
            let Entry::Used(node) = entry else { continue };
            if !node.original {
                continue;
            }
            let root = NodeId::try_from(i).map_err(|_| "arena index too large")?;
            let mut at = root;
            reached += 1;
            'walk: loop {
                step()?;
                let node = self.node(at).ok_or("dangling link")?;
                if let Some(child) = node.first_child {
                    at = child;
                    reached += 1;
                    continue;
                }
                loop {
                    if at == root {
                        break 'walk;
                    }
                    step()?;
                    let node = self.node(at).ok_or("dangling link")?;
                    if let Some(next) = node.next_sibling {
                        at = next;
                        reached += 1;
                        break;
                    }
                    at = node.parent.ok_or("non-original without parent")?;
                }
            }
        }
        Ok(reached)
    }
}
