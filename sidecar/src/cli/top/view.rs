//! Drawing one [`Report`] with ratatui: a header, a box per process with
//! its figures (the same lines as the snapshot), and the members.

use std::time::Duration;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};
use ratatui::Frame;

use super::report::{lines, member_lines, Process, Report, Status};

/// Draws `report` over the whole frame.
pub fn draw(frame: &mut Frame<'_>, report: &Report, interval: Duration) {
    let boxes: Vec<(Block<'_>, Vec<Line<'_>>)> = report.processes.iter().map(process).collect();
    let members = report.membership().map(|(url, roster)| {
        let block = Block::bordered().title(format!(" members as {url} sees them "));
        let text: Vec<Line<'_>> = member_lines(roster).into_iter().map(Line::from).collect();
        (block, text)
    });
    let mut constraints = vec![Constraint::Length(1)];
    constraints.extend(
        boxes
            .iter()
            .chain(members.as_ref())
            .map(|(_, text)| Constraint::Length(text.len() as u16 + 2)),
    );
    constraints.push(Constraint::Min(0));
    let areas = Layout::vertical(constraints).split(frame.area());
    let header = Line::from(vec![
        Span::styled("relaycache top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  every {}  q, Esc or Ctrl-C quits",
            humantime::format_duration(interval)
        )),
    ]);
    frame.render_widget(header, areas[0]);
    for ((block, text), area) in boxes
        .into_iter()
        .chain(members)
        .zip(areas.iter().skip(1).copied())
    {
        render(frame, block, text, area);
    }
}

fn render(frame: &mut Frame<'_>, block: Block<'_>, text: Vec<Line<'_>>, area: Rect) {
    let paragraph = Paragraph::new(text).block(block).wrap(Wrap { trim: false });
    frame.render_widget(paragraph, area);
}

/// A process's box: its URL and role as the title, its figures inside.
fn process(process: &Process) -> (Block<'static>, Vec<Line<'static>>) {
    let label = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
    match &process.status {
        Status::Up {
            reading,
            rates,
            roster,
        } => {
            let role = roster.as_ref().map_or("", |r| r.role.as_str());
            let block = Block::bordered().title(format!(" {}  up  {role} ", process.url));
            let text = lines(reading, rates.as_ref())
                .into_iter()
                .map(|(name, figures)| {
                    Line::from(vec![
                        Span::styled(format!("{name:<14}"), label),
                        Span::raw(figures),
                    ])
                })
                .collect();
            (block, text)
        }
        Status::Down { error } => {
            let down = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
            let block = Block::bordered()
                .border_style(down)
                .title(format!(" {}  down ", process.url));
            (block, vec![Line::from(Span::styled(error.clone(), down))])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::top::report::tests::sample_report;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn a_frame_shows_every_label_the_members_and_a_down_process() {
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("a test terminal");
        let report = sample_report();
        terminal
            .draw(|frame| draw(frame, &report, Duration::from_secs(1)))
            .expect("draw");
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|cell| cell.symbol())
            .collect();
        for wanted in [
            "relaycache top",
            "q, Esc or Ctrl-C quits",
            "http://a:9787  up  member",
            "requests",
            "hit ratio",
            "hits by tier",
            "tokens saved",
            "saved",
            "upstream",
            "per second",
            "last interval",
            "memory 50.0%",
            "http://b:9787  down",
            "connection refused",
            "members as http://a:9787 sees them",
            "10.0.0.2:3320",
            "suspect",
        ] {
            assert!(
                screen.contains(wanted),
                "no {wanted:?} on screen:\n{screen}"
            );
        }
    }
}
