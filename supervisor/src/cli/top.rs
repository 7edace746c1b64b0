//! `supervisor top`: the live view in a terminal, refreshed every second from the admin socket's
//! `GET /snapshot` (the same `crate::dashboard::Snapshot` the web dashboard shows).
//!
//! `q`, Esc or Ctrl-C quit. `ratatui::init` puts the terminal in raw mode on the alternate
//! screen and installs a panic hook that restores it; [`Restore`] restores it on every other way
//! out. With a stdout that is not a terminal, one snapshot is printed as plain text instead.

use super::control::{admin_socket, request};
use super::TargetArgs;
use crate::dashboard::snapshot::{cooldown, plain_text, request_header, request_line};
use crate::dashboard::Snapshot;
use crate::exit;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

const REFRESH: Duration = Duration::from_secs(1);

pub fn run(args: &TargetArgs) -> u8 {
    let socket = match admin_socket(args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !std::io::stdout().is_terminal() {
        return match fetch(&socket) {
            Ok(s) => {
                print!("{}", plain_text(&s));
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::RUNTIME
            }
        };
    }
    // Fail before taking over the terminal, so the error stays readable.
    let mut snap = match fetch(&socket) {
        Ok(s) => Ok(s),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::RUNTIME;
        }
    };
    let mut terminal = ratatui::init();
    let _restore = Restore;
    loop {
        if terminal.draw(|f| draw(f, &snap)).is_err() {
            return exit::RUNTIME;
        }
        let next = Instant::now() + REFRESH;
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            if !event::poll(left).unwrap_or(false) {
                break;
            }
            if let Ok(Event::Key(k)) = event::read() {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c;
                if k.kind == KeyEventKind::Press && quit {
                    return exit::OK;
                }
            }
        }
        snap = fetch(&socket);
    }
}

/// Restores the terminal when `run` returns (the panic hook covers panics).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn fetch(socket: &Path) -> Result<Snapshot, String> {
    let r =
        request(socket, "GET", "/snapshot", Duration::from_secs(3)).map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("admin socket answered {}: {}", r.status, r.body));
    }
    serde_json::from_str(&r.body)
        .map_err(|e| format!("unexpected snapshot from {}: {e}", socket.display()))
}

fn draw(f: &mut Frame, snap: &Result<Snapshot, String>) {
    let s = match snap {
        Ok(s) => s,
        Err(e) => {
            let p = Paragraph::new(format!("supervisor top: {e}\n\nq quits"));
            f.render_widget(p, f.area());
            return;
        }
    };
    let [head, chart, workers, providers, requests] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(5),
        Constraint::Length(s.workers.len() as u16 + 3),
        Constraint::Length(s.providers.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(f.area());
    let t = &s.totals;
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}ms"));
    let line = format!(
        "req/s {:.1}  err/s {:.1}  requests {}  errors {}  p50 {}  p99 {}  ttfb {}  tokens/s {:.1}  tokens {}  cost ${:.4}",
        t.requests_per_s, t.errors_per_s, t.requests, t.errors, ms(t.p50_ms), ms(t.p99_ms),
        ms(t.ttfb_p50_ms), t.tokens_per_s, t.tokens, t.cost_usd
    );
    let title = Block::bordered().title(" supervisor top — q quits ");
    f.render_widget(Paragraph::new(line).block(title), head);
    let points: Vec<u64> = s
        .history
        .requests_per_s
        .iter()
        .map(|v| v.round() as u64)
        .collect();
    let from = points
        .len()
        .saturating_sub(chart.width.saturating_sub(2) as usize);
    let spark = Sparkline::default()
        .block(Block::bordered().title(" requests/s "))
        .data(&points[from..])
        .style(Style::default().fg(Color::Cyan));
    f.render_widget(spark, chart);
    f.render_widget(worker_table(s), workers);
    f.render_widget(provider_table(s), providers);
    f.render_widget(request_list(s), requests);
}

fn header(cells: &'static [&'static str]) -> Row<'static> {
    Row::new(cells.to_vec()).style(Style::default().add_modifier(Modifier::BOLD))
}

fn worker_table(s: &Snapshot) -> Table<'static> {
    let rows = s.workers.iter().map(|w| {
        let color = match w.state.as_str() {
            "IDLE" => Color::Green,
            "BUSY" | "BUSY_STREAMING" | "INIT" | "READY" => Color::Yellow,
            _ => Color::Red,
        };
        Row::new(vec![
            w.id.to_string(),
            w.pid.map_or("-".into(), |p| p.to_string()),
            w.state.clone(),
            w.inflight.to_string(),
            w.served.to_string(),
            w.restarts.to_string(),
            format!("{}M", w.rss_bytes / (1 << 20)),
            w.heartbeat_age_ms.map_or("-".into(), |a| format!("{a}ms")),
        ])
        .style(Style::default().fg(color))
    });
    let widths = [4, 8, 15, 9, 8, 9, 7, 10].map(Constraint::Length);
    Table::new(rows, widths)
        .header(header(&[
            "ID",
            "PID",
            "STATE",
            "INFLIGHT",
            "SERVED",
            "RESTARTS",
            "RSS",
            "HEARTBEAT",
        ]))
        .block(Block::bordered().title(" workers "))
}

fn provider_table(s: &Snapshot) -> Table<'static> {
    let rows = s.providers.iter().map(|p| {
        let color = match p.breaker.as_str() {
            "closed" if p.cooldown_s <= 0.0 => Color::Reset,
            "open" => Color::Red,
            _ => Color::Yellow,
        };
        Row::new(vec![
            p.name.clone(),
            p.breaker.clone(),
            cooldown(p.cooldown_s),
            p.inflight.to_string(),
            p.requests.to_string(),
            p.errors.to_string(),
            p.latency_ms.map_or("-".into(), |v| format!("{v:.1}ms")),
            p.tokens.to_string(),
            format!("${:.4}", p.cost_usd),
        ])
        .style(Style::default().fg(color))
    });
    let widths = [20, 10, 9, 9, 9, 8, 10, 9, 10].map(Constraint::Length);
    Table::new(rows, widths)
        .header(header(&[
            "PROVIDER", "BREAKER", "COOLDOWN", "INFLIGHT", "REQUESTS", "ERRORS", "LATENCY",
            "TOKENS", "COST",
        ]))
        .block(Block::bordered().title(" providers "))
}

/// The last requests, newest first, as many as fit (the same lines as the plain text).
fn request_list(s: &Snapshot) -> Paragraph<'static> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = vec![Line::styled(request_header(), bold)];
    for r in &s.requests {
        let color = match r.status {
            500.. => Color::Red,
            400..=499 => Color::Yellow,
            _ => Color::Reset,
        };
        lines.push(Line::styled(request_line(r), Style::default().fg(color)));
    }
    Paragraph::new(lines).block(Block::bordered().title(" last requests "))
}
