//! The line port's commands with `--rooms` (issue 17), pure: a line that starts with `/` is a
//! command (`/join NAME`, `/rooms`), an escaped line (`//text` is the line `/text`), or a
//! mistake; any other line is an ordinary line. Commands and their replies are not lines:
//! never broadcast, never counted, never kept. Without `--rooms` nothing here is consulted
//! and a line starting with `/` is an ordinary line.

/// The longest room name.
pub const MAX_ROOM_NAME: usize = 64;

/// What a line starting with `/` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `/join NAME`: move to room NAME (a valid name: see [`room_name`]).
    Join(&'a str),
    /// `/join` with a name that is not one; the client stays where it was.
    BadName,
    /// `/rooms`: list the rooms that have members.
    Rooms,
    /// `//text`: the ordinary line `/text` (the first `/` dropped, the `\n` kept).
    Escaped(&'a [u8]),
    /// Any other line starting with `/`.
    Unknown,
}

/// The reply to a line starting with `/` that is no command.
pub const UNKNOWN: &[u8] = b"ERR unknown command: the commands are /join NAME and /rooms \
    (start a line with // to send one that begins with /)\n";

/// The reply to `/join` with a name that is not one.
pub const BAD_NAME: &[u8] = b"ERR bad room name: 1 to 64 of A-Z a-z 0-9 _ -\n";

/// The reply to a `/join` that would make one room more than `--max-rooms`.
pub fn too_many_rooms(max: usize) -> String {
    format!(
        "ERR too many rooms (--max-rooms {max}): join one that has members (/rooms lists \
         them)\n"
    )
}

/// Why a client cannot start in its first room `name`: `--max-rooms` rooms exist and that
/// one is not among them (said in an `ERR` line before the close, or a 503).
pub fn no_room_to_start_in(max: usize, name: &str) -> String {
    format!("too many rooms (--max-rooms {max}): room {name} cannot open; try again later")
}

/// Why a room name is refused (`/ws/NAME`'s 400).
pub const BAD_NAME_REASON: &str = "bad room name: 1 to 64 of A-Z a-z 0-9 _ -";

/// What `line` (a complete line, with its `\n`) is: `None` for an ordinary line. A command
/// may end in `\r\n` (telnet's line end) as well as `\n`.
pub fn parse(line: &[u8]) -> Option<Command<'_>> {
    let rest = line.strip_prefix(b"/")?;
    if rest.starts_with(b"/") {
        return Some(Command::Escaped(rest));
    }
    let text = rest.strip_suffix(b"\n").unwrap_or(rest);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    Some(match text {
        b"rooms" => Command::Rooms,
        b"join" => Command::BadName,
        _ => match text.strip_prefix(b"join ") {
            Some(name) => room_name(name).map_or(Command::BadName, Command::Join),
            None => Command::Unknown,
        },
    })
}

/// `name` as a room name, if it is one: 1 to [`MAX_ROOM_NAME`] of `A-Z a-z 0-9 _ -`.
pub fn room_name(name: &[u8]) -> Option<&str> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-';
    if name.is_empty() || name.len() > MAX_ROOM_NAME || !name.iter().all(allowed) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_escapes_and_mistakes() {
        assert_eq!(parse(b"hello\n"), None);
        assert_eq!(parse(b"\n"), None);
        assert_eq!(parse(b"/join lobby\n"), Some(Command::Join("lobby")));
        assert_eq!(parse(b"/join lobby\r\n"), Some(Command::Join("lobby")));
        assert_eq!(parse(b"/join a_b-9\n"), Some(Command::Join("a_b-9")));
        assert_eq!(parse(b"/rooms\n"), Some(Command::Rooms));
        assert_eq!(parse(b"//rooms\n"), Some(Command::Escaped(b"/rooms\n")));
        assert_eq!(parse(b"//\n"), Some(Command::Escaped(b"/\n")));
        for bad in [
            &b"/join\n"[..],
            b"/join \n",
            b"/join two words\n",
            b"/join caf\xc3\xa9\n",
            b"/join a.b\n",
            b"/join  lobby\n",
        ] {
            assert_eq!(parse(bad), Some(Command::BadName), "{bad:?}");
        }
        let long = format!("/join {}\n", "x".repeat(MAX_ROOM_NAME + 1));
        assert_eq!(parse(long.as_bytes()), Some(Command::BadName));
        let longest = format!("/join {}\n", "x".repeat(MAX_ROOM_NAME));
        assert!(matches!(parse(longest.as_bytes()), Some(Command::Join(_))));
        for unknown in [
            &b"/\n"[..],
            b"/help\n",
            b"/rooms now\n",
            b"/JOIN x\n",
            b"/joinx\n",
        ] {
            assert_eq!(parse(unknown), Some(Command::Unknown), "{unknown:?}");
        }
    }

    proptest! {
        #[test]
        fn a_line_not_starting_with_a_slash_is_never_a_command(
            line in proptest::collection::vec(any::<u8>(), 0..80)
                .prop_filter("no leading /", |l| l.first() != Some(&b'/'))
        ) {
            prop_assert_eq!(parse(&line), None);
        }

        #[test]
        fn an_escaped_line_is_the_line_with_one_slash_fewer(
            rest in proptest::collection::vec(any::<u8>(), 0..80)
        ) {
            let mut line = b"//".to_vec();
            line.extend_from_slice(&rest);
            let mut expected = b"/".to_vec();
            expected.extend_from_slice(&rest);
            prop_assert_eq!(parse(&line), Some(Command::Escaped(&expected)));
        }

        #[test]
        fn every_valid_name_joins_and_nothing_else_does(
            name in proptest::collection::vec(any::<u8>(), 0..70)
        ) {
            let valid = !name.is_empty()
                && name.len() <= MAX_ROOM_NAME
                && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
            let mut line = b"/join ".to_vec();
            line.extend_from_slice(&name);
            line.push(b'\n');
            let parsed = parse(&line);
            if valid {
                prop_assert_eq!(parsed, Some(Command::Join(std::str::from_utf8(&name).unwrap())));
            } else if !name.contains(&b'\n') && name.last() != Some(&b'\r') {
                prop_assert_eq!(parsed, Some(Command::BadName));
            }
        }
    }
}
