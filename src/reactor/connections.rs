//! The loop's one map of connections: every connection, in whichever stage it is (TLS
//! handshake, HTTP request, member of the broadcast), is one entry under its token, and an
//! event is dispatched by the entry's stage. The map keeps how many entries each stage has,
//! for the `--max-clients` caps, in the only two places entries come and go.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use mio::Token;

use crate::admission::access::AddressPlace;
use crate::conn::connection::Member;
use crate::reactor::listeners::Listener;
use crate::transport::tls::Handshake;
use crate::web::requests::Exchange;

/// Where a connection in its TLS handshake goes afterwards, and its place in its address's
/// count (given back if the handshake fails).
#[derive(Debug)]
pub struct Admitting {
    pub which: Listener,
    pub place: AddressPlace,
}

/// One connection, in its stage. It moves from stage to stage by being taken out of the
/// map and put back under the same token.
#[derive(Debug)]
pub enum ClientConnection {
    /// In its TLS handshake.
    Handshake(Handshake<Admitting>),
    /// On the web listener: its HTTP request being read or answered.
    Request(Exchange),
    /// A member of the broadcast: a line or WebSocket client, open or leaving.
    Member(Member),
}

/// A stage, to count entries by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Handshake = 0,
    Request = 1,
    Member = 2,
}

impl ClientConnection {
    pub fn stage(&self) -> Stage {
        match self {
            ClientConnection::Handshake(_) => Stage::Handshake,
            ClientConnection::Request(_) => Stage::Request,
            ClientConnection::Member(_) => Stage::Member,
        }
    }
}

/// Every connection of the loop, by token, with how many are in each stage.
#[derive(Debug, Default)]
pub struct Connections {
    map: HashMap<Token, ClientConnection>,
    in_stage: [usize; 3],
}

impl Connections {
    /// Puts `connection` under `token` (a new token, or one just taken out to change stage).
    pub fn insert(&mut self, token: Token, connection: ClientConnection) {
        self.in_stage[connection.stage() as usize] += 1;
        if let Some(old) = self.map.insert(token, connection) {
            self.in_stage[old.stage() as usize] -= 1;
        }
    }

    /// Takes the connection under `token` out.
    pub fn remove(&mut self, token: Token) -> Option<ClientConnection> {
        let connection = self.map.remove(&token)?;
        self.in_stage[connection.stage() as usize] -= 1;
        Some(connection)
    }

    /// Takes the connection under `token` out if it is in `stage`.
    pub fn remove_in(&mut self, token: Token, stage: Stage) -> Option<ClientConnection> {
        match self.map.entry(token) {
            Entry::Occupied(entry) if entry.get().stage() == stage => {
                self.in_stage[stage as usize] -= 1;
                Some(entry.remove())
            }
            _ => None,
        }
    }

    /// Takes the member under `token` out (`None` if it is not a member).
    pub fn remove_member(&mut self, token: Token) -> Option<Member> {
        match self.remove_in(token, Stage::Member)? {
            ClientConnection::Member(member) => Some(member),
            _ => None,
        }
    }

    pub fn stage_of(&self, token: Token) -> Option<Stage> {
        self.map.get(&token).map(ClientConnection::stage)
    }

    /// Whether `token` is a connection on its way to membership (in its TLS handshake or a
    /// web exchange): one whose admission deadline still runs.
    pub fn is_admitting(&self, token: Token) -> bool {
        matches!(
            self.stage_of(token),
            Some(Stage::Handshake | Stage::Request)
        )
    }

    /// How many connections are on their way to membership (see [`Self::is_admitting`]).
    pub fn admitting(&self) -> usize {
        self.count(Stage::Handshake) + self.count(Stage::Request)
    }

    /// How many connections are in `stage`.
    pub fn count(&self, stage: Stage) -> usize {
        self.in_stage[stage as usize]
    }

    /// Whether no connection is left, in any stage.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn member(&self, token: Token) -> Option<&Member> {
        match self.map.get(&token)? {
            ClientConnection::Member(member) => Some(member),
            _ => None,
        }
    }

    pub fn member_mut(&mut self, token: Token) -> Option<&mut Member> {
        match self.map.get_mut(&token)? {
            ClientConnection::Member(member) => Some(member),
            _ => None,
        }
    }

    pub fn handshake_mut(&mut self, token: Token) -> Option<&mut Handshake<Admitting>> {
        match self.map.get_mut(&token)? {
            ClientConnection::Handshake(handshake) => Some(handshake),
            _ => None,
        }
    }

    pub fn exchange_mut(&mut self, token: Token) -> Option<&mut Exchange> {
        match self.map.get_mut(&token)? {
            ClientConnection::Request(exchange) => Some(exchange),
            _ => None,
        }
    }

    /// Every member, by token.
    pub fn members(&self) -> impl Iterator<Item = (Token, &Member)> {
        self.map
            .iter()
            .filter_map(|(&token, connection)| match connection {
                ClientConnection::Member(member) => Some((token, member)),
                _ => None,
            })
    }

    /// Every member, by token.
    pub fn members_mut(&mut self) -> impl Iterator<Item = (Token, &mut Member)> {
        self.map
            .iter_mut()
            .filter_map(|(&token, connection)| match connection {
                ClientConnection::Member(member) => Some((token, member)),
                _ => None,
            })
    }

    /// The tokens of every connection in `stage`.
    pub fn tokens_in(&self, stage: Stage) -> Vec<Token> {
        self.map
            .iter()
            .filter(|(_, connection)| connection.stage() == stage)
            .map(|(&token, _)| token)
            .collect()
    }
}
