//! What the user typed, understood: multi-line messages (a `"""` block, or lines ending in a
//! backslash) and slash commands. Pure parsing, no terminal, so that it is unit-tested.

/// A slash command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    /// Set (or with no text, show) the system message.
    System(String),
    Clear,
    Set(Setting, String),
    Show,
    Stats,
    Save(String),
    Load(String),
    /// Show or collapse a thinking model's reasoning.
    Think,
    Exit,
}

/// What `/set` can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Temperature,
    TopP,
    TopK,
    MinP,
    MaxTokens,
    Seed,
}

impl Setting {
    /// Every setting with its name, for parsing, `/show` and completion.
    pub const ALL: [(Setting, &'static str); 6] = [
        (Setting::Temperature, "temperature"),
        (Setting::TopP, "top_p"),
        (Setting::TopK, "top_k"),
        (Setting::MinP, "min_p"),
        (Setting::MaxTokens, "max_tokens"),
        (Setting::Seed, "seed"),
    ];

    /// The setting's name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(s, _)| *s == self).map_or("", |(_, n)| n)
    }
}

/// Slash commands and what they take, for `/help` and tab completion.
pub const COMMANDS: [(&str, &str); 11] = [
    ("/help", "show this help"),
    ("/system", "TEXT  set the system message (no text: show it)"),
    ("/clear", "start a new conversation (the system message stays)"),
    ("/set", "NAME VALUE  temperature, top_p, top_k, min_p, max_tokens (0: no cap) or seed"),
    ("/show", "current settings and model information"),
    ("/stats", "the last reply: prompt tokens, cached tokens, TTFT, tok/s"),
    ("/save", "FILE  save the conversation as JSON (OpenAI messages)"),
    ("/load", "FILE  load a conversation saved with /save"),
    ("/think", "show a thinking model's reasoning dimmed, or collapse it (toggles; shown at first)"),
    ("/exit", "leave (Ctrl-D too)"),
    ("\"\"\"", "start or end a multi-line message; a line ending in \\ continues too"),
];

/// Parses a line that starts with `/`.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let needs = |what: &str| if rest.is_empty() { Err(format!("{name} needs {what}")) } else { Ok(rest.to_string()) };
    Ok(match name {
        "/help" | "/?" => Command::Help,
        "/system" => Command::System(rest.to_string()),
        "/clear" => Command::Clear,
        "/show" => Command::Show,
        "/stats" => Command::Stats,
        "/save" => Command::Save(needs("a file name")?),
        "/load" => Command::Load(needs("a file name")?),
        "/think" => Command::Think,
        "/exit" | "/quit" | "/bye" => Command::Exit,
        "/set" => {
            let (key, value) = rest
                .split_once(char::is_whitespace)
                .ok_or_else(|| "usage: /set NAME VALUE (e.g. /set temperature 0.2)".to_string())?;
            let setting = Setting::ALL.iter().find(|(_, n)| *n == key).map(|(s, _)| *s).ok_or_else(|| {
                let names: Vec<_> = Setting::ALL.iter().map(|(_, n)| *n).collect();
                format!("no setting '{key}' (settings: {})", names.join(", "))
            })?;
            Command::Set(setting, value.trim().to_string())
        }
        other => return Err(format!("unknown command {other} (/help lists them)")),
    })
}

/// What a line of input amounts to once multi-line input is put together.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// More lines are needed (show the continuation prompt).
    More,
    /// A message to send.
    Message(String),
    /// A slash command (or its parse error).
    Command(Result<Command, String>),
    /// Nothing (an empty line).
    Nothing,
}

/// Puts lines together into messages.
#[derive(Debug, Default)]
pub struct LineAssembler {
    lines: Vec<String>,
    /// Inside a `"""` block.
    block: bool,
}

/// The marker that opens and closes a multi-line block.
const BLOCK: &str = "\"\"\"";

impl LineAssembler {
    /// Whether a message is being continued.
    pub fn in_progress(&self) -> bool {
        self.block || !self.lines.is_empty()
    }

    /// Forgets a half-typed message (Ctrl-C).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Takes one line as typed.
    pub fn push(&mut self, line: &str) -> Input {
        if self.block {
            if let Some(before) = line.trim_end().strip_suffix(BLOCK) {
                if !before.is_empty() {
                    self.lines.push(before.to_string());
                }
                return self.finish();
            }
            self.lines.push(line.to_string());
            return Input::More;
        }
        if !self.in_progress() {
            let trimmed = line.trim();
            if let Some(after) = trimmed.strip_prefix(BLOCK) {
                self.block = true;
                if let Some(one_line) = after.strip_suffix(BLOCK) {
                    self.lines.push(one_line.to_string());
                    return self.finish();
                }
                if !after.is_empty() {
                    self.lines.push(after.to_string());
                }
                return Input::More;
            }
            if trimmed.starts_with('/') {
                return Input::Command(parse_command(trimmed));
            }
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                self.lines.push(head.to_string());
                Input::More
            }
            None => {
                self.lines.push(line.to_string());
                self.finish()
            }
        }
    }

    fn finish(&mut self) -> Input {
        let text = std::mem::take(&mut self.lines).join("\n");
        self.block = false;
        if text.trim().is_empty() {
            Input::Nothing
        } else {
            Input::Message(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Vec<Input> {
        let mut a = LineAssembler::default();
        lines.iter().map(|l| a.push(l)).collect()
    }

    #[test]
    fn plain_lines_are_messages() {
        assert_eq!(feed(&["hello"]), [Input::Message("hello".into())]);
        assert_eq!(feed(&["   "]), [Input::Nothing]);
    }

    #[test]
    fn triple_quotes_make_a_block() {
        let out = feed(&["\"\"\"", "line one", "", "line three", "\"\"\""]);
        assert_eq!(out[..4], [Input::More, Input::More, Input::More, Input::More]);
        assert_eq!(out[4], Input::Message("line one\n\nline three".into()));
        assert_eq!(feed(&["\"\"\"inline\"\"\""]), [Input::Message("inline".into())]);
        let out = feed(&["\"\"\"first", "/not a command", "last\"\"\""]);
        assert_eq!(out[2], Input::Message("first\n/not a command\nlast".into()));
    }

    #[test]
    fn trailing_backslashes_continue() {
        let out = feed(&["one \\", "two\\", "three"]);
        assert_eq!(out, [Input::More, Input::More, Input::Message("one \ntwo\nthree".into())]);
    }

    #[test]
    fn reset_forgets_a_half_typed_message() {
        let mut a = LineAssembler::default();
        assert_eq!(a.push("\"\"\""), Input::More);
        a.reset();
        assert!(!a.in_progress());
        assert_eq!(a.push("hi"), Input::Message("hi".into()));
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("/help"), Ok(Command::Help));
        assert_eq!(parse_command("/system Be brief.  "), Ok(Command::System("Be brief.".into())));
        assert_eq!(parse_command("/set temperature 0.2"), Ok(Command::Set(Setting::Temperature, "0.2".into())));
        assert_eq!(parse_command("/set  max_tokens   64"), Ok(Command::Set(Setting::MaxTokens, "64".into())));
        assert_eq!(parse_command("/save chat.json"), Ok(Command::Save("chat.json".into())));
        assert_eq!(parse_command("/think"), Ok(Command::Think));
        assert_eq!(parse_command("/exit"), Ok(Command::Exit));
        assert!(parse_command("/save").unwrap_err().contains("needs a file name"));
        assert!(parse_command("/set warmth 3").unwrap_err().contains("no setting 'warmth'"));
        assert!(parse_command("/set temperature").unwrap_err().contains("usage"));
        assert!(parse_command("/frobnicate").unwrap_err().contains("unknown command /frobnicate"));
        assert_eq!(feed(&["/clear"]), [Input::Command(Ok(Command::Clear))]);
    }
}
