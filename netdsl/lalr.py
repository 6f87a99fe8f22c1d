"""The spec parser's run time: an LALR(1) parser and contextual lexer over lark's generated tables, without lark.

``scripts/generate_parser.py`` has lark build the tables of ``grammar/netdsl.lark`` ahead of time
(``grammar/netdsl.tables.json``). Running them through lark meant importing lark (its grammar
loader, Earley and CYK parsers, caching machinery) and building its parser objects at every start
of the command line, longer than parsing a spec takes. This module runs the same tables the way
lark 1's LALR front end does for the options of :data:`netdsl.parser.LARK_OPTIONS` (contextual
lexer, ``propagate_positions``, ``maybe_placeholders``; no ``keep_all_tokens``, no lexer
callbacks, no post-lexer):

* the lexer of a parser state matches the terminals that state accepts (and the ignored ones),
  in lark's order: priority, then longest possible match, then pattern length, then name; a string
  terminal that a regular-expression terminal of the same priority also matches is typed by the
  string's name (lark's "unless" rule);
* when that lexer matches nothing, the lexer of every terminal tries the same place: a match is an
  :class:`UnexpectedToken` (what was found, what the state accepts), else the
  :class:`UnexpectedCharacters` of the state's lexer;
* each reduction builds lark's tree: children of ``_rule`` symbols spliced in, ``None`` for an
  absent ``[optional]``, a ``?rule`` with one child replaced by it, and positions propagated from
  the first and last children that have them.

tests/test_lalr.py checks tokens, trees, positions and errors against lark on the bundled specs and
on generated sources.
"""

from __future__ import annotations

import re
from typing import Any

SHIFT = 0
"""lark's action code for a shift (or a goto); the argument is the next state. A reduce's argument is a rule."""


class Token(str):
    """A terminal matched in the source: its text (the ``str``), ``type`` (the terminal's name) and where it is."""

    __slots__ = ("type", "start_pos", "line", "column", "end_line", "end_column", "end_pos")

    def __new__(cls, type_: str, value: str, start_pos: int, line: int, column: int) -> Token:
        token = super().__new__(cls, value)
        token.type = type_
        token.start_pos, token.line, token.column = start_pos, line, column
        token.end_line, token.end_column, token.end_pos = line, column, start_pos
        return token

    @property
    def value(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"Token({self.type!r}, {str(self)!r})"


class Meta:
    """Where a tree node is in the source (set when one of its children has a position), as lark's ``Meta``."""

    def __init__(self) -> None:
        self.empty = True


class Tree:
    """A node of the parse tree: the rule (or alias) name, its children (trees, tokens, ``None``) and its meta."""

    __slots__ = ("data", "children", "meta")

    def __init__(self, data: str, children: list[Any], meta: Meta | None = None):
        self.data = data
        self.children = children
        self.meta = Meta() if meta is None else meta

    def __repr__(self) -> str:
        return f"Tree({self.data!r}, {self.children!r})"


class UnexpectedInput(Exception):
    """A syntax error; ``line`` and ``column`` are 1-based."""

    line: int
    column: int


class UnexpectedCharacters(UnexpectedInput):
    """No terminal matches at ``pos_in_stream``; ``allowed`` names the terminals the parser state accepts."""

    def __init__(self, pos: int, line: int, column: int, allowed: set[str]):
        super().__init__(f"no terminal matches at line {line}, column {column}")
        self.pos_in_stream, self.line, self.column, self.allowed = pos, line, column, allowed


class UnexpectedToken(UnexpectedInput):
    """``token`` cannot come next; ``expected`` names the terminals that could."""

    def __init__(self, token: Token, expected: set[str]):
        super().__init__(f"unexpected {token.type} {str(token)!r}")
        self.token, self.expected = token, expected
        self.line, self.column = token.line, token.column


# --------------------------------------------------------------------------- lexer


class _Terminal:
    def __init__(self, data: dict[str, Any]):
        pattern = data["pattern"]
        self.name: str = data["name"]
        self.priority: int = data["priority"]
        self.is_string = pattern["__type__"] == "PatternStr"
        value: str = pattern["value"]
        regexp = re.escape(value) if self.is_string else value
        for flag in pattern["flags"]:
            regexp = f"(?{flag}:{regexp})"
        self.value, self.flags, self.regexp = value, set(pattern["flags"]), regexp
        self.max_width: int = len(value) if self.is_string else pattern["_width"][1]
        self.has_newline = ("\n" in regexp or "\\n" in regexp or "\\s" in regexp or "[^" in regexp
                            or ("(?s" in regexp and "." in regexp))


class _Lexer:
    """The lexer of one set of terminals (lark's ``BasicLexer``); its regular expression is compiled on first use."""

    def __init__(self, terminals: list[_Terminal], ignore: frozenset[str]):
        self.terminals = sorted(terminals, key=lambda t: (-t.priority, -t.max_width, -len(t.value), t.name))
        self.ignore = ignore
        self.newline_types = frozenset(t.name for t in terminals if t.has_newline)
        self.allowed: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        # a regular-expression terminal -> the string terminals it also matches, as one expression
        self._unless: dict[str, re.Pattern[str]] = {}

    def _compile(self) -> re.Pattern[str]:
        strings = [t for t in self.terminals if t.is_string]
        embedded: set[str] = set()
        for retok in (t for t in self.terminals if not t.is_string):
            unless = []
            for strtok in strings:
                if strtok.priority != retok.priority:
                    continue
                m = re.match(retok.regexp, strtok.value)
                if m is not None and m.group(0) == strtok.value:
                    unless.append(strtok)
                    if strtok.flags <= retok.flags:
                        embedded.add(strtok.name)
            if unless:
                self._unless[retok.name] = _alternation(unless)
        kept = [t for t in self.terminals if t.name not in embedded]
        self.allowed = {t.name for t in kept} - self.ignore
        return _alternation(kept)

    def next_token(self, state: _LexState) -> Token | None:
        """The next token that is not ignored, or None at the end of the text."""
        if self._pattern is None:
            self._pattern = self._compile()
        text = state.text
        while state.pos < len(text):
            m = self._pattern.match(text, state.pos)
            if m is None:
                raise UnexpectedCharacters(state.pos, state.line, state.column, self.allowed)
            value, type_ = m.group(0), m.lastgroup or ""
            token = Token(type_, value, state.pos, state.line, state.column)
            state.feed(value, type_ in self.newline_types)
            if type_ in self.ignore:
                continue
            token.end_line, token.end_column, token.end_pos = state.line, state.column, state.pos
            unless = self._unless.get(type_)
            string = unless.fullmatch(value) if unless is not None else None
            if string is not None:
                token.type = string.lastgroup or type_
            return token
        return None


def _alternation(terminals: list[_Terminal]) -> re.Pattern[str]:
    """One expression matching any of ``terminals``, the first alternative that matches winning (a named group each)."""
    return re.compile("|".join(f"(?P<{t.name}>{t.regexp})" for t in terminals))


class _LexState:
    """Position in the text, with lark's line and column counting."""

    def __init__(self, text: str):
        self.text = text
        self.pos, self.line, self.column, self.line_start = 0, 1, 1, 0

    def feed(self, value: str, may_have_newline: bool) -> None:
        if may_have_newline:
            newlines = value.count("\n")
            if newlines:
                self.line += newlines
                self.line_start = self.pos + value.rindex("\n") + 1
        self.pos += len(value)
        self.column = self.pos - self.line_start + 1


# --------------------------------------------------------------------------- tree building


def _propagate(res: Any, children: list[Any]) -> Any:
    """lark's ``PropagatePositions``: a tree starts where its first positioned child's container starts, and ends
    where its last one's ends (containers are the inlined nodes)."""
    if not isinstance(res, Tree):
        return res
    first = _first_meta(children)
    if first is not None:
        _take_position(res.meta, first, _START_FIELDS)
    last = _first_meta(reversed(children))
    if last is not None:
        _take_position(res.meta, last, _END_FIELDS)
    return res


# (field, its container_ field) of each end of a position; spelled out once, not formatted at every reduction
_START_FIELDS = tuple((name, f"container_{name}") for name in ("line", "column", "start_pos"))
_END_FIELDS = tuple((name, f"container_{name}") for name in ("end_line", "end_column", "end_pos"))
_ABSENT = object()


def _take_position(meta: Meta, child: Any, fields: tuple[tuple[str, str], ...]) -> None:
    """Copy one end of ``child``'s container (its own position when it has none) into ``meta``: into its
    ``container_`` fields always, and into ``fields`` themselves when ``meta`` has no such end yet."""
    fresh = not hasattr(meta, fields[0][0])
    for name, container in fields:
        value = getattr(child, container, _ABSENT)
        if value is _ABSENT:
            value = getattr(child, name)
        if fresh:
            setattr(meta, name, value)
        setattr(meta, container, value)
    if fresh:
        meta.empty = False


def _first_meta(children: Any) -> Any:
    for child in children:
        if isinstance(child, Tree):
            if not child.meta.empty:
                return child.meta
        elif isinstance(child, Token):
            return child
    return None


class _Rule:
    """One grammar rule and how its reduction builds the tree (lark's ``ParseTreeBuilder`` for it)."""

    def __init__(self, data: dict[str, Any]):
        self.origin: str = data["origin"]["name"]
        expansion = data["expansion"]
        self.size = len(expansion)
        options = data["options"]
        if options["keep_all_tokens"]:
            raise ValueError(f"rule {self.origin}: keep_all_tokens is not supported")
        self.name: str = data["alias"] or options["template_source"] or self.origin
        self.expand_single = bool(options["expand1"]) and not data["alias"]
        empty = options["empty_indices"]
        nones = [len(ones) for ones in "".join(str(int(b)) for b in empty).split("0")] if empty else [0] * (
            self.size + 1)
        # (child index, splice its children, Nones before it); filtered-out anonymous tokens are dropped
        self.include: list[tuple[int, bool, int]] = []
        pending = 0
        for i, sym in enumerate(expansion):
            pending += nones[i]
            is_term = sym["__type__"] == "Terminal"
            if not (is_term and sym["filter_out"]):
                self.include.append((i, not is_term and sym["name"].startswith("_"), pending))
                pending = 0
        self.trailing_nones = pending + nones[self.size]
        self.filtered = bool(empty) or len(self.include) < self.size or any(s for _, s, _ in self.include)

    def build(self, children: list[Any]) -> Any:
        """The value of a reduction of ``children`` (one per symbol of the expansion)."""
        kept = children
        if self.filtered:
            kept = []
            for i, splice, nones in self.include:
                if nones:
                    kept += [None] * nones
                if splice:
                    kept += children[i].children
                else:
                    kept.append(children[i])
            if self.trailing_nones:
                kept += [None] * self.trailing_nones
        res = kept[0] if self.expand_single and len(kept) == 1 else Tree(self.name, kept)
        return _propagate(res, children)


# --------------------------------------------------------------------------- parser


class LalrParser:
    """Parses text with the serialised tables of ``lark.Lark.memo_serialize`` (as decoded from JSON)."""

    def __init__(self, data: dict[str, Any], memo: dict[int, Any], start: str = "start"):
        def resolve(obj: Any) -> Any:
            return memo[obj["@"]] if isinstance(obj, dict) and "@" in obj else obj

        frontend = data["parser"]
        lexer_conf = frontend["lexer_conf"]
        if lexer_conf["lexer_type"] != "contextual" or data["options"]["postlex"] is not None:
            raise ValueError("only lark's contextual lexer without a post-lexer is supported")
        self.terminals = {t.name: t for t in (_Terminal(resolve(t)) for t in lexer_conf["terminals"])}
        self.ignore = frozenset(lexer_conf["ignore"])
        rules = {r["@"]: _Rule(resolve(r)) for r in frontend["parser_conf"]["rules"]}
        table = frontend["parser"]
        symbols = table["tokens"]
        self.states: dict[int, dict[str, tuple[int, Any]]] = {
            state: {symbols[s]: (action, arg if action == SHIFT else rules[arg["@"]])
                    for s, (action, arg) in row.items()}
            for state, row in table["states"].items()
        }
        self.start_state: int = table["start_states"][start]
        self.end_state: int = table["end_states"][start]
        self._lexers: dict[frozenset[str], _Lexer] = {}
        self._state_lexers: dict[int, _Lexer] = {}
        self._root = _Lexer(list(self.terminals.values()), self.ignore)

    def _lexer(self, state: int) -> _Lexer:
        lexer = self._state_lexers.get(state)
        if lexer is None:
            accepts = frozenset(s for s in self.states[state] if s in self.terminals)
            lexer = self._lexers.get(accepts)
            if lexer is None:
                names = accepts | self.ignore
                lexer = self._lexers[accepts] = _Lexer([self.terminals[n] for n in names], self.ignore)
            self._state_lexers[state] = lexer
        return lexer

    def _next_token(self, lex: _LexState, state: int) -> Token | None:
        try:
            return self._lexer(state).next_token(lex)
        except UnexpectedCharacters as err:
            failure = err
        # Nothing the state accepts matches: a terminal of the grammar that does is an unexpected token.
        try:
            token = self._root.next_token(lex)
        except UnexpectedCharacters:
            token = None
        if token is None:
            raise failure
        raise UnexpectedToken(token, failure.allowed)

    def parse(self, text: str) -> Any:
        """The parse tree of ``text``; :class:`UnexpectedInput` for a syntax error."""
        states = self.states
        state_stack = [self.start_state]
        value_stack: list[Any] = []
        lex = _LexState(text)
        last: Token | None = None

        def feed(token: Token, is_end: bool) -> Any:
            while True:
                row = states[state_stack[-1]]
                step = row.get(token.type)
                if step is None:
                    raise UnexpectedToken(token, {s for s in row if s.isupper()})
                action, arg = step
                if action == SHIFT:
                    state_stack.append(arg)
                    value_stack.append(token)
                    return None
                rule: _Rule = arg
                if rule.size:
                    children = value_stack[-rule.size:]
                    del state_stack[-rule.size:]
                    del value_stack[-rule.size:]
                else:
                    children = []
                value_stack.append(rule.build(children))
                state_stack.append(states[state_stack[-1]][rule.origin][1])
                if is_end and state_stack[-1] == self.end_state:
                    return value_stack[-1]

        while (token := self._next_token(lex, state_stack[-1])) is not None:
            feed(token, False)
            last = token
        end = Token("$END", "", 0, 1, 1)
        if last is not None:
            end.start_pos, end.line, end.column = last.start_pos, last.line, last.column
            end.end_line, end.end_column, end.end_pos = last.end_line, last.end_column, last.end_pos
        return feed(end, True)

