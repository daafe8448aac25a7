//! Rooms (`--rooms`): many broadcasts in one server, each under a name, pure and without
//! mio. Without `--rooms` there is one room, `main`, that everyone is in and that never
//! goes; with it, a room exists while it has members (or lines still to hand out) and is
//! created by the first join, up to `--max-rooms`.
//!
//! Finding a room by name is a hash lookup, so a join to an existing room is O(1) in the
//! number of rooms and clients; creating or removing one also updates the sorted set of
//! names that `/rooms` lists from (O(log R)). Slots are reused, so memory follows the rooms
//! that exist, not the rooms that ever did.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use super::batch::Batch;
use super::history::History;
use super::{Broadcast, Form};

/// A room's number: its slot. Stable while the room exists; reused after it is gone.
pub type RoomId = usize;

/// The room every client starts in.
pub const MAIN: &str = "main";

/// The one room's number without `--rooms`.
pub const ONLY_ROOM: RoomId = 0;

/// Most rooms `/rooms` lists (by name); more are summed up as `+N`.
pub const LISTED_AT_MOST: usize = 100;

/// What a new room's broadcast is made of: the batch's bounds and the history's.
#[derive(Debug, Clone, Copy)]
pub struct RoomShape {
    pub batch_limit: usize,
    pub max_line: usize,
    pub max_hold: Duration,
    /// `--history` lines and bytes, per room.
    pub history: Option<(usize, usize)>,
}

impl RoomShape {
    fn broadcast(&self) -> Broadcast {
        Broadcast::new(
            Batch::new(self.batch_limit, self.max_line, self.max_hold),
            self.history
                .map(|(lines, bytes)| History::new(lines, bytes)),
        )
    }
}

/// One room: its name, its broadcast and, with `--rooms`, who is in it (by client number).
#[derive(Debug)]
pub struct Room {
    name: Box<str>,
    pub broadcast: Broadcast,
    /// Its members, with `--rooms` (without, everyone is a member and none is listed).
    members: HashSet<usize>,
    /// How many of its members take frames: the batch is framed only for a room that has
    /// some.
    framed_members: usize,
    /// How many take events (`/events` readers): likewise for the batch's events.
    event_members: usize,
    /// Listed in [`Rooms::take_pending`]: it has lines to hand out.
    pending: bool,
}

impl Room {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its members' client numbers (with `--rooms` only; none without).
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().copied()
    }

    /// How many members it has (with `--rooms` only).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Whether any of its members takes WebSocket frames.
    pub fn has_framed_members(&self) -> bool {
        self.framed_members > 0
    }

    /// Whether any of its members takes events.
    pub fn has_event_members(&self) -> bool {
        self.event_members > 0
    }

    /// Whether it holds nothing to hand out: no batch and no kept line.
    fn is_idle(&self) -> bool {
        self.broadcast.batch.is_empty() && self.broadcast.kept_lines.is_empty()
    }
}

/// A join that would create one room more than `--max-rooms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyRooms {
    pub max: usize,
}

/// Every room, by number and by name, and which have lines to hand out.
#[derive(Debug)]
pub struct Rooms {
    /// `--rooms`: rooms come and go by name. Without it, room 0 is `main` for good.
    named: bool,
    max: usize,
    shape: RoomShape,
    slots: Vec<Option<Room>>,
    free: Vec<RoomId>,
    by_name: HashMap<Box<str>, RoomId>,
    /// The rooms by name in order, for `/rooms`.
    sorted: BTreeMap<Box<str>, RoomId>,
    /// Rooms that may have lines to hand out, each once.
    pending: Vec<RoomId>,
    /// An empty list kept for `take_pending` (no allocation a turn).
    spare: Vec<RoomId>,
    count: usize,
    /// Rooms with members (those `/rooms` lists).
    occupied: usize,
    /// The answer to `/rooms` while no one joins or leaves (a client may ask many times).
    listing: Option<Vec<u8>>,
    peak: usize,
    /// Numbers the hand-outs of every room, so that a client moving between rooms is never
    /// mistaken for one served already.
    hand_outs: u64,
    /// Lines and bytes in every room's history together.
    history_totals: (u64, u64),
}

impl Rooms {
    /// One room, `main`, that everyone is in: the server without `--rooms`.
    pub fn single(shape: RoomShape) -> Rooms {
        let mut rooms = Rooms::new(shape, false, 1);
        rooms.create(MAIN);
        rooms
    }

    /// No room yet, at most `max` at once: the server with `--rooms`.
    pub fn named(shape: RoomShape, max: usize) -> Rooms {
        Rooms::new(shape, true, max)
    }

    fn new(shape: RoomShape, named: bool, max: usize) -> Rooms {
        Rooms {
            named,
            max,
            shape,
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            sorted: BTreeMap::new(),
            pending: Vec::new(),
            spare: Vec::new(),
            count: 0,
            occupied: 0,
            listing: None,
            peak: 0,
            hand_outs: 0,
            history_totals: (0, 0),
        }
    }

    /// Whether rooms come and go by name (`--rooms`).
    pub fn is_named(&self) -> bool {
        self.named
    }

    /// The room numbered `id`, if it exists.
    pub fn get(&self, id: RoomId) -> Option<&Room> {
        self.slots.get(id).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, id: RoomId) -> Option<&mut Room> {
        self.slots.get_mut(id).and_then(Option::as_mut)
    }

    /// The room named `name`, if it exists.
    pub fn find(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    /// Rooms that exist now, and the most that ever did at once.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Whether client `member` may go into the room named `name`: yes if it exists, else if
    /// one more room fits in `--max-rooms`, counting the room `from` it leaves as gone if it
    /// is alone there.
    pub fn may_enter(
        &self,
        name: &str,
        member: usize,
        from: Option<RoomId>,
    ) -> Result<(), TooManyRooms> {
        let alone = from
            .and_then(|id| self.get(id))
            .is_some_and(|room| room.members.len() == 1 && room.members.contains(&member));
        // Counting the room it leaves as gone (`--max-rooms` may be as large as usize).
        let room_for_one_more = self.count - usize::from(alone) < self.max;
        if !self.named || self.by_name.contains_key(name) || room_for_one_more {
            return Ok(());
        }
        Err(TooManyRooms { max: self.max })
    }

    /// Puts new client `member` in the room named `name`, creating the room if it does not
    /// exist and `--max-rooms` allows. Without `--rooms`: room 0, with no bookkeeping.
    pub fn enter(&mut self, name: &str, member: usize, form: Form) -> Result<RoomId, TooManyRooms> {
        self.may_enter(name, member, None)?;
        Ok(self.admit(name, member, form))
    }

    /// The room named `name` for lines of a client that is going (see the loop's
    /// `route_deferred_lines`): found, or made if `--max-rooms` allows (without members: it
    /// goes once its lines are handed out; it is marked for that).
    pub fn open(&mut self, name: &str) -> Option<RoomId> {
        if !self.named {
            return Some(ONLY_ROOM);
        }
        if let Some(id) = self.find(name) {
            return Some(id);
        }
        if self.count >= self.max {
            return None;
        }
        let id = self.create(name);
        self.mark_pending(id);
        Some(id)
    }

    /// Moves client `member` from room `from` to the room named `name` (see
    /// [`Rooms::may_enter`]): out of the old room first, so that a room it leaves empty is
    /// gone before a new one is made.
    pub fn move_member(
        &mut self,
        member: usize,
        from: RoomId,
        name: &str,
        form: Form,
    ) -> Result<RoomId, TooManyRooms> {
        self.may_enter(name, member, Some(from))?;
        self.leave(from, member, form);
        Ok(self.admit(name, member, form))
    }

    /// Puts `member` (taking `form`) in the room named `name`, made if need be.
    fn admit(&mut self, name: &str, member: usize, form: Form) -> RoomId {
        if !self.named {
            self.count_form(ONLY_ROOM, form, true);
            return ONLY_ROOM;
        }
        let id = match self.find(name) {
            Some(id) => id,
            None => self.create(name),
        };
        if let Some(room) = self.slots.get_mut(id).and_then(Option::as_mut)
            && room.members.insert(member)
        {
            self.listing = None;
            if room.members.len() == 1 {
                self.occupied += 1;
            }
            self.count_form(id, form, true);
        }
        id
    }

    /// Takes client `member` (taking `form`) out of room `id`; the room goes if that left
    /// it empty and idle.
    pub fn leave(&mut self, id: RoomId, member: usize, form: Form) {
        if !self.named {
            return self.count_form(ONLY_ROOM, form, false);
        }
        if let Some(room) = self.slots.get_mut(id).and_then(Option::as_mut)
            && room.members.remove(&member)
        {
            self.listing = None;
            if room.members.is_empty() {
                self.occupied -= 1;
            }
            self.count_form(id, form, false);
        }
        self.remove_if_deserted(id);
    }

    /// Counts a member taking `form` into (`joined`) or out of room `id`: how many take
    /// frames and events (what the hand-out builds for them).
    fn count_form(&mut self, id: RoomId, form: Form, joined: bool) {
        let Some(room) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let count = match form {
            Form::Frames => &mut room.framed_members,
            Form::Events => &mut room.event_members,
            Form::Lines | Form::Chunks => return,
        };
        *count = if joined {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
    }

    /// Removes room `id` if it has no members and nothing left to hand out (with `--rooms`;
    /// its history goes with it).
    fn remove_if_deserted(&mut self, id: RoomId) {
        let deserted = self
            .get(id)
            .is_some_and(|room| room.members.is_empty() && room.is_idle());
        if !self.named || !deserted {
            return;
        }
        if let Some(room) = self.slots.get_mut(id).and_then(Option::take) {
            if room.pending {
                // Its number may be reused at once: it must not stay listed for the new room.
                self.pending.retain(|&pending| pending != id);
            }
            if let Some(history) = &room.broadcast.history {
                self.history_totals.0 -= history.lines() as u64;
                self.history_totals.1 -= history.len() as u64;
            }
            self.by_name.remove(&room.name);
            self.sorted.remove(&room.name);
            self.listing = None;
            self.free.push(id);
            self.count -= 1;
        }
    }

    fn create(&mut self, name: &str) -> RoomId {
        let room = Room {
            name: name.into(),
            broadcast: self.shape.broadcast(),
            members: HashSet::new(),
            framed_members: 0,
            event_members: 0,
            pending: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(room);
                id
            }
            None => {
                self.slots.push(Some(room));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name.into(), id);
        self.sorted.insert(name.into(), id);
        self.listing = None;
        self.count += 1;
        self.peak = self.peak.max(self.count);
        id
    }

    /// Notes that room `id` has lines to hand out (see [`Rooms::take_pending`]).
    pub fn mark_pending(&mut self, id: RoomId) {
        if let Some(room) = self.get_mut(id)
            && !room.pending
        {
            room.pending = true;
            self.pending.push(id);
        }
    }

    /// The rooms marked since the last call, each once; the marks are cleared. Give the
    /// list back with [`Rooms::give_back`] once done with it.
    pub fn take_pending(&mut self) -> Vec<RoomId> {
        let spare = std::mem::take(&mut self.spare);
        let pending = std::mem::replace(&mut self.pending, spare);
        for &id in &pending {
            if let Some(room) = self.get_mut(id) {
                room.pending = false;
            }
        }
        pending
    }

    /// Returns a list `take_pending` gave, for reuse.
    pub fn give_back(&mut self, mut list: Vec<RoomId>) {
        list.clear();
        self.spare = list;
    }

    /// Keeps room `id`'s batch in its history (with `--history`), just handed out, and the
    /// totals of every room's history in step.
    pub fn keep_in_history(&mut self, id: RoomId) {
        let Some(room) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let Some(history) = room.broadcast.history.as_mut() else {
            return;
        };
        let (lines, bytes) = (history.lines() as u64, history.len() as u64);
        history.keep(room.broadcast.batch.whole());
        let totals = &mut self.history_totals;
        totals.0 = totals.0 - lines + history.lines() as u64;
        totals.1 = totals.1 - bytes + history.len() as u64;
    }

    /// After a hand-out of room `id`: it stays marked while it still has lines to hand out
    /// (a held batch, kept lines), else it goes if it has no members.
    pub fn settle(&mut self, id: RoomId) {
        match self.get(id).map(Room::is_idle) {
            Some(false) => self.mark_pending(id),
            Some(true) => self.remove_if_deserted(id),
            None => {}
        }
    }

    /// Lines and bytes in every room's history together.
    pub fn history_totals(&self) -> (u64, u64) {
        self.history_totals
    }

    /// A copy of the list of rooms marked as having lines to hand out (they stay marked).
    pub fn pending_now(&self) -> Vec<RoomId> {
        self.pending.clone()
    }

    /// Bytes framed and not yet handed out, in every room.
    pub fn framed_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|room| room.broadcast.batch.len())
            .sum()
    }

    /// Drops every room's kept lines (shutdown ran out of time); returns their bytes.
    pub fn drop_kept_lines(&mut self) -> usize {
        self.slots
            .iter_mut()
            .flatten()
            .flat_map(|room| room.broadcast.kept_lines.drain(..))
            .map(|(_, line)| line.len())
            .sum()
    }

    /// Whether a room with lines to hand out also has kept lines waiting for space in its
    /// batch (the loop must not sleep then).
    pub fn kept_lines_waiting(&self) -> bool {
        self.pending.iter().any(|&id| {
            self.get(id)
                .is_some_and(|room| !room.broadcast.kept_lines.is_empty())
        })
    }

    /// A new number for a hand-out, unique across rooms.
    pub fn next_hand_out(&mut self) -> u64 {
        self.hand_outs += 1;
        self.hand_outs
    }

    /// The reply to `/rooms`: `OK rooms NAME:MEMBERS ...`, by name, at most
    /// [`LISTED_AT_MOST`] of them, then `+N` for the N not listed. Only rooms with members
    /// are listed (a room stays a moment after its last member, to hand out its lines).
    /// Made once until someone joins or leaves: O(listed), and the rooms without members
    /// met on the way (rooms handing out their last lines: few).
    pub fn listing(&mut self) -> &[u8] {
        let sorted = &self.sorted;
        let slots = &self.slots;
        let occupied = self.occupied;
        self.listing.get_or_insert_with(|| {
            let mut reply = String::from("OK rooms");
            let mut listed = 0;
            for (name, &id) in sorted {
                if listed == LISTED_AT_MOST {
                    break;
                }
                let members = slots[id].as_ref().map_or(0, |room| room.members.len());
                if members > 0 {
                    listed += 1;
                    let _ = write!(reply, " {name}:{members}");
                }
            }
            if occupied > listed {
                let _ = write!(reply, " +{}", occupied - listed);
            }
            reply.push('\n');
            reply.into_bytes()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> RoomShape {
        RoomShape {
            batch_limit: 1024,
            max_line: 100,
            max_hold: Duration::ZERO,
            history: None,
        }
    }

    #[test]
    fn a_room_counts_who_takes_frames_and_events_with_or_without_rooms() {
        for mut rooms in [Rooms::single(shape()), Rooms::named(shape(), 10)] {
            let main = rooms.enter(MAIN, 1, Form::Lines).unwrap();
            let takes = |rooms: &Rooms| {
                let room = rooms.get(main).unwrap();
                (room.has_framed_members(), room.has_event_members())
            };
            assert_eq!(takes(&rooms), (false, false));
            rooms.enter(MAIN, 2, Form::Events).unwrap();
            rooms.enter(MAIN, 3, Form::Events).unwrap();
            rooms.enter(MAIN, 4, Form::Frames).unwrap();
            assert_eq!(takes(&rooms), (true, true));
            rooms.leave(main, 2, Form::Events);
            assert_eq!(takes(&rooms), (true, true), "one reader of events is left");
            rooms.leave(main, 3, Form::Events);
            rooms.leave(main, 4, Form::Frames);
            assert_eq!(takes(&rooms), (false, false));
        }
    }

    #[test]
    fn single_has_main_for_good_and_tracks_no_one() {
        let mut rooms = Rooms::single(shape());
        assert_eq!(rooms.enter("anything", 7, Form::Lines), Ok(0));
        rooms.leave(0, 7, Form::Lines);
        assert_eq!(rooms.get(0).map(Room::name), Some(MAIN));
        assert_eq!(rooms.count(), 1);
    }

    #[test]
    fn a_room_exists_while_it_has_members() {
        let mut rooms = Rooms::named(shape(), 10);
        let a = rooms.enter("a", 1, Form::Lines).unwrap();
        assert_eq!(rooms.enter("a", 2, Form::Lines), Ok(a));
        assert_eq!(rooms.count(), 1);
        rooms.leave(a, 1, Form::Lines);
        assert_eq!(rooms.find("a"), Some(a));
        rooms.leave(a, 2, Form::Lines);
        assert_eq!(rooms.find("a"), None);
        assert_eq!((rooms.count(), rooms.peak()), (0, 1));
        assert_eq!(rooms.listing(), b"OK rooms\n");
    }

    #[test]
    fn the_listing_follows_joins_and_leaves() {
        let mut rooms = Rooms::named(shape(), 10);
        let a = rooms.enter("a", 1, Form::Lines).unwrap();
        assert_eq!(rooms.listing(), b"OK rooms a:1\n");
        rooms.enter("a", 2, Form::Lines).unwrap();
        assert_eq!(rooms.listing(), b"OK rooms a:2\n");
        rooms.enter("a", 3, Form::Lines).unwrap();
        rooms.move_member(3, a, "b", Form::Lines).unwrap();
        assert_eq!(rooms.listing(), b"OK rooms a:2 b:1\n");
        rooms.leave(a, 1, Form::Lines);
        rooms.leave(a, 2, Form::Lines);
        assert_eq!(rooms.listing(), b"OK rooms b:1\n");
    }

    #[test]
    fn a_room_with_lines_to_hand_out_waits_for_them() {
        let mut rooms = Rooms::named(shape(), 10);
        let a = rooms.enter("a", 1, Form::Lines).unwrap();
        let batch = &mut rooms.get_mut(a).unwrap().broadcast.batch;
        batch.append(super::super::batch::Sender::Client(1), b"x\n", 1);
        rooms.leave(a, 1, Form::Lines);
        assert_eq!(rooms.find("a"), Some(a), "kept for its lines");
        assert_eq!(rooms.listing(), b"OK rooms\n", "but not listed");
        rooms
            .get_mut(a)
            .unwrap()
            .broadcast
            .batch
            .clear(std::time::Instant::now());
        rooms.remove_if_deserted(a);
        assert_eq!(rooms.find("a"), None);
    }

    #[test]
    fn max_rooms_bounds_creation_not_joining() {
        let mut rooms = Rooms::named(shape(), 2);
        rooms.enter("a", 1, Form::Lines).unwrap();
        rooms.enter("b", 2, Form::Lines).unwrap();
        assert_eq!(
            rooms.enter("c", 3, Form::Lines),
            Err(TooManyRooms { max: 2 })
        );
        assert!(rooms.enter("a", 3, Form::Lines).is_ok());
        let b = rooms.find("b").unwrap();
        rooms.leave(b, 2, Form::Lines);
        assert!(rooms.enter("c", 2, Form::Lines).is_ok(), "a slot came free");
        assert_eq!(rooms.peak(), 2);
        let a = rooms.find("a").unwrap();
        assert_eq!(
            rooms.move_member(1, a, "d", Form::Lines),
            Err(TooManyRooms { max: 2 }),
            "a has 2"
        );
        rooms.leave(a, 3, Form::Lines);
        let d = rooms
            .move_member(1, a, "d", Form::Lines)
            .expect("alone in a, its move frees it");
        assert_eq!((rooms.find("a"), rooms.find("d")), (None, Some(d)));
        assert_eq!(rooms.peak(), 2, "never three at once");
    }

    #[test]
    fn listing_is_sorted_and_bounded() {
        let mut rooms = Rooms::named(shape(), 1000);
        for i in (0..LISTED_AT_MOST + 5).rev() {
            rooms.enter(&format!("r{i:03}"), i, Form::Lines).unwrap();
        }
        rooms.enter("r000", 9999, Form::Lines).unwrap();
        let listing = String::from_utf8(rooms.listing().to_vec()).unwrap();
        assert!(
            listing.starts_with("OK rooms r000:2 r001:1 r002:1 "),
            "{listing}"
        );
        assert!(listing.ends_with(" r099:1 +5\n"), "{listing}");
        assert_eq!(listing.split(' ').count(), 2 + LISTED_AT_MOST + 1);
    }

    #[test]
    fn the_largest_max_rooms_overflows_nothing() {
        let mut rooms = Rooms::named(shape(), usize::MAX);
        let main = rooms.enter(MAIN, 1, Form::Lines).unwrap();
        assert!(rooms.move_member(1, main, "x", Form::Lines).is_ok());
    }

    #[test]
    fn pending_rooms_are_taken_once() {
        let mut rooms = Rooms::named(shape(), 10);
        let a = rooms.enter("a", 1, Form::Lines).unwrap();
        let b = rooms.enter("b", 2, Form::Lines).unwrap();
        rooms.mark_pending(b);
        rooms.mark_pending(a);
        rooms.mark_pending(b);
        assert_eq!(rooms.take_pending(), vec![b, a]);
        assert!(rooms.pending_now().is_empty());
        rooms.mark_pending(a);
        assert_eq!(rooms.take_pending(), vec![a]);
    }

    #[test]
    fn a_room_knows_whether_it_has_members_that_take_frames() {
        let mut rooms = Rooms::named(shape(), 10);
        let a = rooms.enter("a", 1, Form::Lines).unwrap();
        rooms.enter("a", 2, Form::Frames).unwrap();
        assert!(rooms.get(a).unwrap().has_framed_members());
        let b = rooms.move_member(2, a, "b", Form::Frames).unwrap();
        assert!(
            !rooms.get(a).unwrap().has_framed_members(),
            "frames left with 2"
        );
        assert!(rooms.get(b).unwrap().has_framed_members());
    }

    #[test]
    fn a_removed_room_leaves_no_stale_pending_mark_for_its_slot() {
        let mut rooms = Rooms::named(shape(), 10);
        let a = rooms.enter("a", 1, Form::Lines).unwrap();
        rooms.mark_pending(a);
        rooms.leave(a, 1, Form::Lines); // deserted and idle: gone, its slot free
        let b = rooms.enter("b", 1, Form::Lines).unwrap();
        assert_eq!(b, a, "the slot is reused");
        rooms.mark_pending(b);
        assert_eq!(rooms.take_pending(), vec![b], "once, not twice");
    }

    #[test]
    fn slots_are_reused() {
        let mut rooms = Rooms::named(shape(), 10);
        for round in 0..100 {
            let id = rooms
                .enter(&format!("room{round}"), round, Form::Lines)
                .unwrap();
            rooms.leave(id, round, Form::Lines);
        }
        assert_eq!(rooms.slots.len(), 1);
    }
}
