use std::time::Duration;

use super::*;
use crate::cli::top::reading::tests::reading;
use crate::cluster::{MemberStatus, Role};

/// A member with a second reading, and a process that is down.
pub(crate) fn sample_report() -> Report {
    let earlier = reading((2, 2, 0), 0.01, [2, 0, 0], [0, 2, 2, 2, 2], 0);
    let reading = reading((6, 4, 1), 0.025, [5, 1, 0], [0, 2, 4, 4, 4], 1);
    let rates = Rates::between(&earlier, &reading, Duration::from_secs(1));
    let member = |id: &str, state, this_process, last_answer_ms| MemberStatus {
        id: id.into(),
        state,
        this_process,
        last_answer_ms,
    };
    let roster = Roster {
        role: Role::Member,
        live: 3,
        quorum: true,
        members: vec![
            member("10.0.0.1:3320", MemberState::Alive, true, None),
            member("10.0.0.2:3320", MemberState::Suspect, false, Some(450)),
            member("10.0.0.3:3320", MemberState::Alive, false, Some(120)),
            member("10.0.0.4:3320", MemberState::Down, false, None),
        ],
    };
    Report {
        processes: vec![
            Process {
                url: "http://a:9787".into(),
                status: Status::Up {
                    reading: Box::new(reading),
                    rates: Some(rates),
                    roster: Some(roster),
                },
            },
            Process {
                url: "http://b:9787".into(),
                status: Status::Down {
                    error: "connection refused".into(),
                },
            },
        ],
    }
}

#[test]
fn the_snapshot_has_every_figure_rates_and_members_in_plain_text() {
    let report = sample_report();
    assert!(!report.all_up());
    let text = report.snapshot();
    let expected = "\
relaycache top: 1 of 2 processes up

http://a:9787  up  member
  requests      11  hits 6  misses 4  bypasses 1
  hit ratio     60.0%  memory 50.0%  peer 10.0%  reserve 0.0%
  hits by tier  memory 5  peer 1  reserve 0
  tokens saved  180  input 60  output 120  cache_read 0  cache_creation 0
  saved         $0.025000
  upstream      p50 2.0 ms  p99 4.0 ms  (4 calls)  errors 1
  memory        4 entries  8.0 KiB
  per second    7.0 requests  hits memory 3.0  peer 1.0  reserve 0.0  $0.015000 saved
  last interval hit ratio 66.7%  memory 50.0%  peer 16.7%  reserve 0.0%  upstream p50 3.0 ms  p99 4.0 ms  (2 calls)

http://b:9787  down: connection refused

members as http://a:9787 sees them
  3 live, quorum yes
  10.0.0.1:3320            alive    this process
  10.0.0.2:3320            suspect  last answer 0.5s ago
  10.0.0.3:3320            alive
  10.0.0.4:3320            down
";
    assert_eq!(text, expected, "got:\n{text}");
    assert!(!text.contains('\u{1b}'), "no escape codes");
}

#[test]
fn a_first_reading_says_rates_follow_and_a_single_process_lists_no_members() {
    let report = Report {
        processes: vec![Process {
            url: "http://a:9787".into(),
            status: Status::Up {
                reading: Box::new(reading((0, 0, 0), 0.0, [0; 3], [0; 5], 0)),
                rates: None,
                roster: Some(Roster::single()),
            },
        }],
    };
    assert!(report.all_up());
    assert!(report.membership().is_none());
    let text = report.snapshot();
    assert!(
        text.starts_with("relaycache top: 1 of 1 processes up\n\nhttp://a:9787  up  single\n"),
        "{text}"
    );
    assert!(
        text.contains("  rates         follow from the next reading\n"),
        "{text}"
    );
    assert!(text.contains("  hit ratio     0.0%  memory 0.0%"), "{text}");
    assert!(
        text.contains("  upstream      no calls  errors 0\n"),
        "{text}"
    );
    assert!(!text.contains("members"), "{text}");
}

#[test]
fn numbers_read_as_people_write_them() {
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    assert_eq!(seconds(0.0123), "12.3 ms");
    assert_eq!(seconds(2.5), "2.50 s");
    assert_eq!(percent(2.0 / 3.0), "66.7%");
    assert_eq!(dollars(0.0012345), "$0.001234");
}
