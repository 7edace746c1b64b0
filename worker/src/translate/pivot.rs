//! The pivot: one dialect-neutral model of a request, a response, a stream event, usage, a stop
//! reason and an error, which every dialect decodes into and encodes from.

use serde_json::Value;

/// A conversation request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub model: String,
    /// System and developer instructions, in order.
    pub system: Vec<Text>,
    /// User and assistant turns; consecutive turns of one role are merged (see `merge_turns`).
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub user: Option<String>,
    pub format: Option<Format>,
    pub reasoning: Option<Reasoning>,
    pub stream: bool,
    /// A Chat Completions client asked for the usage-only chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// A text part; `cache` is Anthropic's `cache_control: {type: ephemeral}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Text {
    pub text: String,
    pub cache: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(Text),
    Image {
        source: Image,
        cache: bool,
    },
    /// An assistant's tool call; `arguments` is the parsed JSON (an object).
    ToolCall {
        id: String,
        name: String,
        arguments: Value,
    },
    /// A tool's result, sent back in a user turn; `content` holds text and image parts.
    ToolResult {
        call_id: String,
        content: Vec<Part>,
        is_error: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Base64 { media_type: String, data: String },
    Url(String),
}

impl Image {
    /// A `data:` URL becomes base64 data, anything else stays a URL.
    pub fn from_url(url: &str) -> Self {
        if let Some(rest) = url.strip_prefix("data:") {
            if let Some((media_type, data)) = rest.split_once(";base64,") {
                return Self::Base64 {
                    media_type: media_type.to_string(),
                    data: data.to_string(),
                };
            }
        }
        Self::Url(url.to_string())
    }

    /// The URL form OpenAI dialects carry (base64 as a `data:` URL).
    pub fn to_url(&self) -> String {
        match self {
            Self::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
            Self::Url(u) => u.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON Schema of the arguments.
    pub parameters: Value,
    pub strict: bool,
    pub cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called (OpenAI `required`, Anthropic `any`).
    Required,
    Named(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
        description: Option<String>,
    },
}

/// Thinking / reasoning settings: OpenAI speaks in efforts, Anthropic in token budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reasoning {
    Off,
    Effort(Effort),
    Budget(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Low,
    Medium,
    High,
}

impl Effort {
    pub fn parse(s: &str) -> Option<Reasoning> {
        Some(match s {
            "minimal" | "none" => Reasoning::Off,
            "low" => Reasoning::Effort(Self::Low),
            "medium" => Reasoning::Effort(Self::Medium),
            "high" => Reasoning::Effort(Self::High),
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    /// The Anthropic thinking budget for an effort.
    pub fn budget(self) -> u64 {
        match self {
            Self::Low => 1024,
            Self::Medium => 4096,
            Self::High => 16384,
        }
    }

    /// The effort nearest a budget (the inverse of `budget` on its values).
    pub fn for_budget(budget: u64) -> Self {
        match budget {
            0..=2048 => Self::Low,
            2049..=8192 => Self::Medium,
            _ => Self::High,
        }
    }
}

/// A non-streamed answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub content: Vec<Output>,
    pub stop: Stop,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Text(String),
    Refusal(String),
    /// `arguments` is the JSON text as the model wrote it.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Stop {
    #[default]
    EndTurn,
    StopSequence(Option<String>),
    MaxTokens,
    ToolUse,
    /// OpenAI `content_filter`, Anthropic `refusal`.
    Refusal,
}

/// Token counts, Anthropic's way: `input` excludes the cache reads and writes, which OpenAI
/// counts inside `prompt_tokens` / `input_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Usage {
    /// OpenAI's `prompt_tokens`: every input token, cached or not.
    pub fn openai_prompt(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
    }

    /// From OpenAI's total input, its cached part (`cached_tokens`) and the part written to the
    /// cache (`cache_write_tokens`, in recent OpenAI APIs and SDKs).
    pub fn from_openai(prompt: u64, cached: u64, written: u64, output: u64) -> Self {
        Self {
            input: prompt.saturating_sub(cached).saturating_sub(written),
            output,
            cache_read: cached,
            cache_write: written,
        }
    }
}

/// One event of a translated stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The answer began; `id` is the provider's response id.
    Start {
        id: String,
    },
    Text(String),
    Refusal(String),
    /// Tool call number `call` (0, 1, ... in order of appearance) began.
    ToolStart {
        call: usize,
        id: String,
        name: String,
    },
    /// More of tool call `call`'s JSON arguments.
    ToolArgs {
        call: usize,
        delta: String,
    },
    /// The clean end.
    Finish {
        stop: Stop,
        usage: Usage,
    },
    /// The stream broke (upstream error event, cut-off, or unreadable data).
    Error(StreamError),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamError {
    pub kind: gateway::ErrorKind,
    pub message: String,
}

/// Merges consecutive turns of one role (Anthropic needs them to alternate) and drops empty text
/// parts and empty turns.
pub fn merge_turns(messages: Vec<Message>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for mut m in messages {
        // Empty text means nothing, and Anthropic refuses it (and a turn left empty).
        m.parts
            .retain(|p| !matches!(p, Part::Text(t) if t.text.is_empty()));
        if m.parts.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == m.role => last.parts.extend(m.parts),
            _ => out.push(m),
        }
    }
    out
}
