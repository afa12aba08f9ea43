//! The line editor of `sockeye connect`'s prompt on a terminal.
//!
//! With the terminal in its usual (cooked) mode, the kernel keeps and echoes what is typed,
//! and a message printed meanwhile takes the typed text off the screen: it is still there,
//! and sent at Enter, but no longer seen. So on a terminal `connect` puts it in raw mode and
//! edits the line itself, as readline does for wscat: the line is kept here and drawn again
//! after every message printed above it.
//!
//! Keys (readline's): characters insert at the cursor; Backspace and Delete (Ctrl-D on a
//! non-empty line) erase; Left and Right (Ctrl-B, Ctrl-F), Home and End (Ctrl-A, Ctrl-E) move;
//! Up and Down (Ctrl-P, Ctrl-N) walk the lines sent before; Ctrl-U erases to the start,
//! Ctrl-K to the end, Ctrl-W the word before the cursor; Enter (or Ctrl-J, Ctrl-M) sends the
//! line; Ctrl-D on an empty line ends input; Ctrl-C interrupts (raw mode turns off the
//! terminal's signals, so it arrives as a key). A line longer than the terminal is wide
//! scrolls sideways to keep the cursor in view. The terminal's mode is restored on drop.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use unicode_width::UnicodeWidthChar;

/// The most lines kept for Up and Down.
const HISTORY: usize = 500;

/// What a key did to the line.
#[derive(Debug, PartialEq, Eq)]
pub enum Edit {
    /// The line changed, or the cursor moved: draw it again.
    Redraw,
    /// Enter: this line is done (it is in the history, and the editor is empty again).
    Line(String),
    /// Ctrl-D on an empty line.
    EndOfInput,
    /// Ctrl-C.
    Interrupt,
    /// Nothing to do.
    Nothing,
}

/// A line being typed, its cursor, and the lines typed before.
#[derive(Default)]
pub struct LineEditor {
    line: Vec<char>,
    /// Where characters go, as an index into `line`.
    cursor: usize,
    /// The first character shown, when the line is wider than the terminal.
    scroll: usize,
    history: Vec<String>,
    /// While walking the history: the entry shown, and the line being typed before.
    browsing: Option<(usize, Vec<char>)>,
    /// Whether the terminal was put in raw mode here (and is restored on drop).
    raw: bool,
}

impl LineEditor {
    /// An editor with the terminal in raw mode.
    pub fn on_terminal() -> std::io::Result<LineEditor> {
        crossterm::terminal::enable_raw_mode()?;
        let mut editor = LineEditor::default();
        editor.raw = true;
        Ok(editor)
    }

    /// Applies one key.
    pub fn key(&mut self, key: KeyEvent) -> Edit {
        if key.kind == KeyEventKind::Release {
            return Edit::Nothing;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => Edit::Interrupt,
            KeyCode::Char('d') if ctrl => {
                if self.line.is_empty() {
                    Edit::EndOfInput
                } else {
                    self.delete()
                }
            }
            KeyCode::Enter => self.enter(),
            KeyCode::Char('j' | 'm') if ctrl => self.enter(),
            KeyCode::Char('a') if ctrl => self.move_to(0),
            KeyCode::Char('e') if ctrl => self.move_to(self.line.len()),
            KeyCode::Char('b') if ctrl => self.move_to(self.cursor.saturating_sub(1)),
            KeyCode::Char('f') if ctrl => self.move_to(self.cursor + 1),
            KeyCode::Char('p') if ctrl => self.older(),
            KeyCode::Char('n') if ctrl => self.newer(),
            KeyCode::Char('u') if ctrl => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
                Edit::Redraw
            }
            KeyCode::Char('k') if ctrl => {
                self.line.truncate(self.cursor);
                Edit::Redraw
            }
            KeyCode::Char('w') if ctrl => {
                let mut start = self.cursor;
                while start > 0 && self.line[start - 1].is_whitespace() {
                    start -= 1;
                }
                while start > 0 && !self.line[start - 1].is_whitespace() {
                    start -= 1;
                }
                self.line.drain(start..self.cursor);
                self.cursor = start;
                Edit::Redraw
            }
            // Other control and Alt combinations are not characters to insert.
            KeyCode::Char(_) if ctrl || key.modifiers.contains(KeyModifiers::ALT) => Edit::Nothing,
            KeyCode::Char(c) => {
                self.line.insert(self.cursor, c);
                self.cursor += 1;
                Edit::Redraw
            }
            KeyCode::Tab => {
                self.line.insert(self.cursor, '\t');
                self.cursor += 1;
                Edit::Redraw
            }
            KeyCode::Backspace => {
                if self.cursor == 0 {
                    return Edit::Nothing;
                }
                self.cursor -= 1;
                self.line.remove(self.cursor);
                Edit::Redraw
            }
            KeyCode::Delete => self.delete(),
            KeyCode::Left => self.move_to(self.cursor.saturating_sub(1)),
            KeyCode::Right => self.move_to(self.cursor + 1),
            KeyCode::Home => self.move_to(0),
            KeyCode::End => self.move_to(self.line.len()),
            KeyCode::Up => self.older(),
            KeyCode::Down => self.newer(),
            _ => Edit::Nothing,
        }
    }

    fn enter(&mut self) -> Edit {
        let line: String = std::mem::take(&mut self.line).into_iter().collect();
        self.cursor = 0;
        self.scroll = 0;
        self.browsing = None;
        if !line.is_empty() && self.history.last() != Some(&line) {
            if self.history.len() == HISTORY {
                self.history.remove(0);
            }
            self.history.push(line.clone());
        }
        Edit::Line(line)
    }

    fn delete(&mut self) -> Edit {
        if self.cursor == self.line.len() {
            return Edit::Nothing;
        }
        self.line.remove(self.cursor);
        Edit::Redraw
    }

    fn move_to(&mut self, at: usize) -> Edit {
        let at = at.min(self.line.len());
        if at == self.cursor {
            return Edit::Nothing;
        }
        self.cursor = at;
        Edit::Redraw
    }

    /// Up: the line sent before the one shown.
    fn older(&mut self) -> Edit {
        let index = match &self.browsing {
            Some((0, _)) => return Edit::Nothing,
            Some((i, _)) => i - 1,
            None if self.history.is_empty() => return Edit::Nothing,
            None => {
                self.browsing = Some((self.history.len(), self.line.clone()));
                self.history.len() - 1
            }
        };
        self.show_history(index)
    }

    /// Down: the line sent after the one shown, and past the newest, the line that was
    /// being typed.
    fn newer(&mut self) -> Edit {
        let Some((index, _)) = self.browsing else {
            return Edit::Nothing;
        };
        if index + 1 < self.history.len() {
            return self.show_history(index + 1);
        }
        let (_, draft) = self.browsing.take().expect("browsing");
        self.line = draft;
        self.cursor = self.line.len();
        Edit::Redraw
    }

    fn show_history(&mut self, index: usize) -> Edit {
        if let Some((shown, _)) = &mut self.browsing {
            *shown = index;
        }
        self.line = self.history[index].chars().collect();
        self.cursor = self.line.len();
        Edit::Redraw
    }

    /// What to write to show `prompt` (`prompt_width` columns wide on the screen) and the
    /// line, on a terminal `columns` wide, from the start of the current row: the row
    /// cleared, the part of the line that fits, and the cursor put where it is in it.
    pub fn render(&mut self, prompt: &str, prompt_width: usize, columns: usize) -> String {
        // One column is left free for the cursor at the end of the line.
        let room = columns.saturating_sub(prompt_width + 1).max(1);
        let width = |chars: &[char]| -> usize { chars.iter().map(|&c| char_width(c)).sum() };
        if self.cursor < self.scroll {
            self.scroll = self.cursor;
        }
        while self.scroll < self.cursor && width(&self.line[self.scroll..self.cursor]) > room {
            self.scroll += 1;
        }
        let mut shown = String::new();
        let mut used = 0;
        for &c in &self.line[self.scroll..] {
            let w = char_width(c);
            if used + w > room {
                break;
            }
            used += w;
            shown.push(if c == '\t' { ' ' } else { c });
        }
        let mut out = format!("\r\x1b[K{prompt}{shown}\r");
        let column = prompt_width + width(&self.line[self.scroll..self.cursor]);
        if column > 0 {
            out.push_str(&format!("\x1b[{column}C"));
        }
        out
    }
}

/// Columns a character takes (a tab is shown as one space; control characters as none).
fn char_width(c: char) -> usize {
    if c == '\t' {
        1
    } else {
        c.width().unwrap_or(0)
    }
}

impl Drop for LineEditor {
    fn drop(&mut self) {
        if self.raw {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(editor: &mut LineEditor, code: KeyCode) -> Edit {
        editor.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn ctrl(editor: &mut LineEditor, c: char) -> Edit {
        editor.key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    fn typed(editor: &mut LineEditor, text: &str) {
        for c in text.chars() {
            assert_eq!(press(editor, KeyCode::Char(c)), Edit::Redraw);
        }
    }

    fn line(editor: &LineEditor) -> String {
        editor.line.iter().collect()
    }

    #[test]
    fn typing_editing_and_enter() {
        let mut e = LineEditor::default();
        typed(&mut e, "helo");
        press(&mut e, KeyCode::Left);
        typed(&mut e, "l");
        assert_eq!(line(&e), "hello");
        ctrl(&mut e, 'a');
        press(&mut e, KeyCode::Delete);
        typed(&mut e, "H");
        press(&mut e, KeyCode::End);
        press(&mut e, KeyCode::Backspace);
        assert_eq!(line(&e), "Hell");
        assert_eq!(press(&mut e, KeyCode::Enter), Edit::Line("Hell".into()));
        assert_eq!(line(&e), "");
        // Ctrl-J and Ctrl-M are Enter too (a pasted or piped newline).
        typed(&mut e, "x");
        assert_eq!(ctrl(&mut e, 'j'), Edit::Line("x".into()));
        assert_eq!(ctrl(&mut e, 'm'), Edit::Line(String::new()));
    }

    #[test]
    fn words_and_ends_of_the_line() {
        let mut e = LineEditor::default();
        typed(&mut e, "one two  three");
        ctrl(&mut e, 'w');
        assert_eq!(line(&e), "one two  ");
        ctrl(&mut e, 'w');
        assert_eq!(line(&e), "one ");
        ctrl(&mut e, 'b');
        ctrl(&mut e, 'k');
        assert_eq!(line(&e), "one");
        ctrl(&mut e, 'b');
        ctrl(&mut e, 'u');
        assert_eq!(line(&e), "e");
        assert_eq!(e.cursor, 0);
        // Ctrl-D deletes under the cursor; on an empty line it ends input.
        assert_eq!(ctrl(&mut e, 'd'), Edit::Redraw);
        assert_eq!(ctrl(&mut e, 'd'), Edit::EndOfInput);
        assert_eq!(ctrl(&mut e, 'c'), Edit::Interrupt);
        // Other control keys insert nothing.
        assert_eq!(ctrl(&mut e, 'z'), Edit::Nothing);
        assert_eq!(line(&e), "");
    }

    #[test]
    fn history_walks_back_and_returns_to_the_draft() {
        let mut e = LineEditor::default();
        for text in ["first", "second", "second"] {
            typed(&mut e, text);
            press(&mut e, KeyCode::Enter);
        }
        assert_eq!(e.history, ["first", "second"], "a repeat is kept once");
        typed(&mut e, "draft");
        press(&mut e, KeyCode::Up);
        assert_eq!(line(&e), "second");
        press(&mut e, KeyCode::Up);
        assert_eq!(line(&e), "first");
        assert_eq!(press(&mut e, KeyCode::Up), Edit::Nothing);
        press(&mut e, KeyCode::Down);
        assert_eq!(line(&e), "second");
        press(&mut e, KeyCode::Down);
        assert_eq!(line(&e), "draft");
        assert_eq!(press(&mut e, KeyCode::Down), Edit::Nothing);
        press(&mut e, KeyCode::Up);
        assert_eq!(press(&mut e, KeyCode::Enter), Edit::Line("second".into()));
    }

    #[test]
    fn render_places_the_cursor_and_scrolls_a_long_line() {
        let mut e = LineEditor::default();
        typed(&mut e, "hello");
        press(&mut e, KeyCode::Left);
        assert_eq!(e.render("> ", 2, 80), "\r\x1b[K> hello\r\x1b[6C");
        // 12 columns: 2 for the prompt, 1 for the cursor, 9 for the line.
        let mut e = LineEditor::default();
        typed(&mut e, "abcdefghijklmnop");
        assert_eq!(e.render("> ", 2, 12), "\r\x1b[K> hijklmnop\r\x1b[11C");
        ctrl(&mut e, 'a');
        assert_eq!(e.render("> ", 2, 12), "\r\x1b[K> abcdefghi\r\x1b[2C");
        // Wide characters take two columns.
        let mut e = LineEditor::default();
        typed(&mut e, "日本");
        assert_eq!(e.render("> ", 2, 80), "\r\x1b[K> 日本\r\x1b[6C");
    }
}
