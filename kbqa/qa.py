"""Question -> retrieve -> prompt -> generate -> ``Answer`` with its sources, as a LangChain (LCEL) chain.

The chain is ``retrieve | branch(no relevant chunk -> refusal sentence, else prompt | chat model)``.
Streaming it yields the sources first and then the answer's tokens, which become ``AnswerEvent``s.
``KBQAChatModel`` (any kbqa LLM as a LangChain chat model) and ``KBRetriever`` (a knowledge base as a
LangChain retriever, scores in metadata) are usable on their own by LangChain apps.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableBranch, RunnableLambda, RunnablePassthrough
from pydantic import ConfigDict

from kbqa.errors import ConfigError, ContextLengthExceeded, EmptyKnowledgeBase
from kbqa.knowledge import KnowledgeBase
from kbqa.language import HAN_CHARS, is_chinese
from kbqa.llm.base import LLM, GenerationParams, Usage
from kbqa.prompts import PromptBook, PromptTemplate
from kbqa.retrieval import Retriever
from kbqa.schema import Answer, AnswerEvent, ChatMessage, SourceChunk

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}
#: How a follow-up question in a chat is turned into the query that retrieval uses.
FOLLOW_UP_MODES = ("rewrite", "concat", "off")
#: Labels small models put before a rewritten question, removed from its start.
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:standalone question|rewritten question|question|translation|translated question"
                    r"|改写后的问题|改写后|完整问题|问题|译文|翻译)(?:\*\*)?\s*[:：](?:\*\*)?\s*", re.IGNORECASE)


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages -> kbqa messages."""
    return [ChatMessage(_ROLES.get(m.type, "user"), str(m.content)) for m in messages]  # type: ignore[arg-type]


def to_langchain_messages(messages: Sequence[ChatMessage]) -> list[BaseMessage]:
    """kbqa messages -> LangChain messages."""
    kinds: dict[str, type[BaseMessage]] = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m.role](content=m.content) for m in messages]


class KBQAChatModel(BaseChatModel):
    """Any kbqa ``LLM`` as a LangChain chat model (``invoke``, ``stream``, ``batch``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any
    params: GenerationParams = GenerationParams()
    #: Filled in by the backend (token counts, finish reason) when given.
    usage: Usage | None = None
    #: Set when the reader of the answer went away: generation stops at the next piece.
    cancel: threading.Event | None = None

    @property
    def _llm_type(self) -> str:
        return "kbqa"

    def _params(self, stop: list[str] | None) -> GenerationParams:
        return replace(self.params, stop=tuple(stop)) if stop else self.params

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text = "".join(c.text for c in self._stream(messages, stop, run_manager))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        pieces = self.llm.stream(to_chat_messages(messages), self._params(stop), self.usage)
        told = False
        try:  # LangChain may drive this in a worker thread that closing the answer stream does not reach
            for piece in pieces:
                if self.cancel is not None and self.cancel.is_set():
                    return
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                told = True
                yield chunk
        finally:
            pieces.close()  # the backends stop generating when their stream is closed
        if not told:  # an empty reply (a stop string at its start): LangChain's stream raises on no chunk at all
            yield ChatGenerationChunk(message=AIMessageChunk(content=""))


class _LoadedOnUse:
    """Stands for the LLM and loads it (``get``) at the first attribute used."""

    def __init__(self, get: Callable[[], LLM]) -> None:
        self._get = get

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy, pickle and pydantic probe these: not the model's business
            raise AttributeError(name)
        return getattr(self._get(), name)


def empty_knowledge_base(name: str) -> EmptyKnowledgeBase:
    """The error for a question to a knowledge base without documents."""
    return EmptyKnowledgeBase(f"Knowledge base '{name}' has no documents yet: add files to it first.")


def chat_turns(history: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """Earlier ``(question, answer)`` turns of a chat; system messages and unanswered questions are left out."""
    turns: list[tuple[str, str]] = []
    pending: str | None = None
    for message in history:
        if message.role == "user":
            pending = message.content
        elif message.role == "assistant" and pending is not None:
            if message.content.strip():  # an empty reply answered nothing
                turns.append((pending, message.content))
            pending = None
    return [(q, a) for q, a in turns if q.strip()]


#: Characters of each earlier question and answer a follow-up is read with: enough for what "it" or "那个"
#: points to; a pasted document in the chat would otherwise overflow the model's context (or slow every
#: follow-up down) while adding nothing to the search.
TURN_CHARS = 1000


def _clip(text: str, limit: int = TURN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def clean_rewrite(text: str) -> str:
    """The standalone question in a model's rewrite: first non-empty line, without labels or quotes."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip()
    return line.strip("\"'“”‘’「」`").strip()


_INTERROGATIVE = re.compile(r"什么|甚么|多少|哪|谁|怎|如何|吗|呢|几|是否|为何|何时|何地|有没有|是不是|能不能|可否|能否"
                            r"|^\s*(?:what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can"
                            r"|could|will|would|should|has|have|had)\b", re.IGNORECASE)


_NUMBER = re.compile(r"第[一二两三四五六七八九十百千零〇\d]+|\d+(?:[.,]\d+)*(?:st|nd|rd|th)?"
                     r"|\b(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last)\b"
                     r"|最后|[一二两三四五六七八九十]+(?=[个种条项点位名年月日次])", re.IGNORECASE)


def _numbers(text: str) -> set[str]:
    """The numbers and ordinals of a text ("第二", "2nd", "second", "最后", "三个"), case-folded."""
    return {m.group(0).casefold() for m in _NUMBER.finditer(text)}


def asks(text: str) -> bool:
    """True for a question: a question mark at its end, or a question word (Chinese anywhere, English first)."""
    return text.rstrip().endswith(("?", "？")) or bool(_INTERROGATIVE.search(text))


#: A number: digits in thousands groups (``4,000``; ``500, 000`` as a small model writes it) or plain, with decimals.
_FIGURE = re.compile(r"\d{1,3}(?:, ?\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?")


def _plain(figure: str) -> str:
    """A number without its thousands separators (``4,000``, ``4, 000`` and ``4000`` are one)."""
    return re.sub(r"[, ]", "", figure)


#: A number in Chinese characters: 十五, 一千九百五十六, 三万, 二〇二一.
_HAN_NUMBER = re.compile("[零〇一二两三四五六七八九十百千万亿]+")
_HAN_DIGITS = {**{c: i for i, c in enumerate("零一二三四五六七八九")}, "〇": 0, "两": 2}
_HAN_UNITS = {"十": 10, "百": 100, "千": 1000}


def han_number(text: str) -> int:
    """The value of a number in Chinese characters (``_HAN_NUMBER``): 十五 -> 15, 二〇二一 -> 2021."""
    for big, size in (("亿", 10**8), ("万", 10**4)):
        if big in text:
            high, low = text.split(big, 1)
            return han_number(high or "一") * size + (han_number(low) if low else 0)
    if not any(c in _HAN_UNITS for c in text):  # digit by digit, as years are written
        return int("".join(str(_HAN_DIGITS[c]) for c in text) or 0)
    total = digit = 0
    for c in text:
        if c in _HAN_UNITS:
            total += (digit or 1) * _HAN_UNITS[c]
            digit = 0
        else:
            digit = _HAN_DIGITS[c]
    return total + digit


def _figures(text: str, han: bool = False) -> set[str]:
    """The numbers of a text written in digits, as ``_plain`` writes them; with ``han``, also those written in
    Chinese characters (十五: 15), which include any 一 ("一个": 1)."""
    digits = {_plain(m.group(0)) for m in _FIGURE.finditer(text)}
    return digits | {str(han_number(m.group(0))) for m in _HAN_NUMBER.finditer(text)} if han else digits


def unsupported_numbers(answer: str, sources: Sequence[str], cut: bool = False) -> list[str]:
    """Numbers of ``answer`` found in none of ``sources`` (citation marks such as ``[1]`` left out): a sum, a
    conversion or a figure the model made up ("90 Million barrels" from passages saying 30 and 60).

    ``cut``: the answer may end mid-number (``max_tokens`` ran out, or a client's ``stop`` string came: "500,"
    of "500,000"), so a number at its very end is not held against it.
    """
    held = set().union(*(_figures(t, han=True) for t in sources)) if sources else set()
    said = re.sub(r"\[\d+(?:\s*[,，]\s*\d+)*\]", " ", answer)
    missing: dict[str, str] = {}  # normalised -> as the answer writes it
    for m in _FIGURE.finditer(said):
        if cut and _last(said, m):
            continue
        if _plain(m.group(0)) not in held:
            missing.setdefault(_plain(m.group(0)), m.group(0))
    return list(missing.values())


#: A code: a word of three or more capitals and digits, such as a ticker, an acronym or a model size (GLXZ, SEC, INT4).
_CODE = re.compile(r"(?<!\w)[A-Z][A-Z0-9]{2,}(?!\w)")


def unsupported_codes(answer: str, sources: Sequence[str], cut: bool = False) -> list[str]:
    """Codes of ``answer`` (``_CODE``) that none of ``sources`` holds: a small model makes up an identifier as
    readily as a figure ("GGLG" for a company whose ticker the passages give as GLXZ). ``cut`` as for numbers."""
    held = "\n".join(sources)
    missing: list[str] = []
    for m in _CODE.finditer(answer):
        if cut and _last(answer, m):
            continue
        if m.group(0) not in held and m.group(0) not in missing:
            missing.append(m.group(0))
    return missing


def _last(text: str, match: re.Match[str]) -> bool:
    """Whether ``match`` ends ``text`` (nothing but marks and spaces after it): where a cut answer may cut it."""
    return not any(c.isalnum() for c in text[match.end():])


def _bare(text: str) -> str:
    """Letters, digits and CJK characters only, case-folded: to compare texts regardless of spacing and marks."""
    return "".join(c for c in text.casefold() if c.isalnum())


_HAN_RUN = re.compile(f"([{HAN_CHARS}]+)")


def _grams(text: str) -> set[str]:
    """Words of a text, case-folded; a run of Chinese characters gives its character pairs."""
    grams: set[str] = set()
    for word in re.findall(r"\w+", text.casefold()):
        for run in _HAN_RUN.split(word):
            if _HAN_RUN.fullmatch(run):
                grams |= {run[i:i + 2] for i in range(max(1, len(run) - 1))}
            elif run:
                grams.add(run)
    return grams


def to_document(chunk: SourceChunk) -> Document:
    """A retrieved chunk as a LangChain document; provenance and score in its metadata."""
    return Document(page_content=chunk.text, id=chunk.id,
                    metadata={"source": chunk.source, "page": chunk.page, "chunk": chunk.chunk,
                              "score": chunk.score, "rank": chunk.rank})


class KBRetriever(BaseRetriever):
    """A knowledge base as a LangChain retriever; each document's metadata carries its score."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any
    kb: Any
    k: int = 3

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [to_document(c) for c in self.retriever.retrieve(self.kb, query, self.k)]


class Threshold(Protocol):
    """The least score a passage needs for a question (``passage`` None: the question's own threshold)."""

    def __call__(self, question: str, passage: str | None = None, /) -> float: ...


class QAEngine:
    """Answers questions from one knowledge base at a time.

    Args:
        retriever: Finds chunks.
        llm: Returns the LLM, loading it on first use (ingest never needs it).
        prompts: Chinese and English templates.
        top_k: Chunks given to the model.
        threshold: ``threshold(question, passage=None)``: the least cosine score a passage needs to be used
            for a question (it depends on their languages and on the lazily loaded embedding model).
        params: Generation settings.
        follow_up: How a question asked after earlier turns of a chat is searched for: ``rewrite`` (the LLM
            rewrites it into a standalone question, which is searched for and answered), ``concat`` (the
            earlier questions are searched for with it, and the turns are shown to the model), ``off``.
        history_turns: Earlier turns taken into account.
        translate: When no passage is relevant enough and the knowledge base holds passages in the other
            language (Chinese / not Chinese), the LLM translates the question into it and it is searched for again:
            e5 scores an English question against its Chinese answer below the threshold.
    """

    def __init__(self, retriever: Retriever, llm: Callable[[], LLM], prompts: PromptBook, top_k: int,
                 threshold: Threshold, params: GenerationParams, follow_up: str = "rewrite",
                 history_turns: int = 2, translate: bool = False) -> None:
        if follow_up not in FOLLOW_UP_MODES:
            raise ConfigError(f"retrieval.follow_up must be one of {FOLLOW_UP_MODES}, not {follow_up!r}.")
        lacking = [t.name for t in (prompts.zh, prompts.en) if not t.rewrite]
        if follow_up == "rewrite" and lacking:
            raise ConfigError(f"Prompt template(s) {lacking} have no 'rewrite' and 'history_turn' prompts, which "
                              "retrieval.follow_up = \"rewrite\" needs: add them (see prompts/qa_en.toml) or set "
                              "retrieval.follow_up to \"concat\" or \"off\".")
        lacking = [t.name for t in (prompts.zh, prompts.en) if not t.translate]
        if translate and lacking:
            raise ConfigError(f"Prompt template(s) {lacking} have no 'translate' prompt, which retrieval.translate "
                              "needs: add it (see prompts/qa_en.toml) or set retrieval.translate = false.")
        self.retriever = retriever
        self.get_llm = llm
        self.prompts = prompts
        self.top_k = top_k
        self.threshold = threshold
        self.params = params
        self.follow_up = follow_up
        self.history_turns = history_turns
        self.translate = translate

    def _recent(self, history: Sequence[ChatMessage]) -> list[tuple[str, str]]:
        """The turns a follow-up is read with: the last ``history_turns``, each side clipped to ``TURN_CHARS``."""
        turns = chat_turns(history)[-self.history_turns:] if self.history_turns else []
        return [(_clip(q), _clip(a)) for q, a in turns]

    def search_query(self, question: str, history: Sequence[ChatMessage] = ()) -> str:
        """What retrieval searches for: the question, or for a follow-up in a chat, its standalone form."""
        return self._read_follow_up(question, history)[0]

    def _read_follow_up(self, question: str, history: Sequence[ChatMessage]) -> tuple[str, str]:
        """``(query, how)``; ``how`` is ``question``, ``rewritten`` or ``concat``."""
        turns = self._recent(history)
        if not turns or self.follow_up == "off":
            return question, "question"
        concat = "\n".join([*(q.strip() for q, _ in turns), question.strip()])
        if self.follow_up == "concat":
            return concat, "concat"
        template, _ = self.prompts.for_question(question)
        messages = template.rewrite_messages(turns, question)
        reply = self.get_llm().generate(messages, replace(self.params, max_tokens=96, stop=()))
        rewritten = clean_rewrite(reply)
        # A reply that is no question (empty, or an essay), or that copies the prompt's own example (a small
        # model answers "那它有多高？" with the example's "埃菲尔铁塔有多高？"), is worth less than the plain
        # concatenation.
        chat = " ".join([question, *(f"{q} {a}" for q, a in turns)])
        said = _grams(chat)
        mine = _grams(rewritten)
        copied = _bare(rewritten) in _bare(template.rewrite) and len(mine & said) < 0.5 * len(mine)
        # A question rewritten as a statement was answered, not rewritten ("那提请抗诉呢？" came back as
        # "人民检察院提出抗诉，应当在…十五日内移送法院。": the earlier answer, and about the other procedure).
        answered = asks(question) and not asks(rewritten)
        # "那第二个元素呢？" read as "…第三个主要元素是什么？": a number or ordinal the chat never had was made up.
        # (One dropped is fine: "the second one" may be replaced by what it is.)
        invented = bool(_numbers(rewritten) - _numbers(chat))
        # The earlier question again ("那第三种情形呢？" read as the question it follows) asks nothing new.
        repeated = _bare(rewritten) in {_bare(q) for q, _ in turns}
        if (not rewritten or len(rewritten) > 2 * len(concat) + 40 or copied or answered or invented
                or repeated):
            return concat, "concat"
        return rewritten, "rewritten"

    def _passing(self, query: str, found: Sequence[SourceChunk], least: float = -1.0) -> list[SourceChunk]:
        """The chunks that reach the threshold for ``query`` (and ``least``)."""
        return [c for c in found if c.score >= max(least, self.threshold(query, c.text))]

    def _holds_other_language(self, kb: KnowledgeBase, zh: bool) -> bool:
        """Whether ``kb`` holds chunks in the other language than a question's (Chinese: ``zh``): any in a
        small knowledge base, 1% or 20 of them in a large one (a few stray lines in a large knowledge base
        in one language would make every question it cannot answer cost a translation)."""
        chinese, total = self.retriever.keywords.get(kb).chinese_chunks()
        return (total - chinese if zh else chinese) >= max(1, min(20, total // 100))

    def _translation(self, query: str) -> str | None:
        """``query`` translated by the LLM into the other language (Chinese / not Chinese).

        None for a reply that is no translation: in the same language, an answer instead of a question
        ("澳大利亚的首府是悉尼。"), a number the question does not hold, or an essay.
        """
        zh = is_chinese(query)
        template, _ = self.prompts.for_question(query)
        reply = self.get_llm().generate(template.translate_messages(query),
                                        replace(self.params, max_tokens=96, stop=()))
        text = clean_rewrite(reply)
        if (not text or is_chinese(text) == zh or len(text) > 3 * len(query) + 40
                or (asks(query) and not asks(text)) or _figures(text) - _figures(query, han=True)):
            return None
        return text

    def find(self, kb: KnowledgeBase, query: str, timings: dict[str, float], notes: dict[str, Any],
             may_translate: bool = True, weak_margin: float | None = None) -> list[SourceChunk]:
        """The passages that reach the threshold for ``query``, searched for in translation too where that may
        find better ones; what was done goes into ``notes`` (``found``, ``threshold`` for a refusal's notice,
        ``translated`` or ``also_translated``) and ``timings``.

        Worth a translation when the knowledge base holds passages in the other language (those found may all
        be in the question's own: a few English rows among Chinese documents), and nothing passed or only
        passages in the question's own language that pass by less than ``weak_margin`` (default
        ``_WEAK_MARGIN``; a document's cover page at 0.801 against English's 0.80 kept an English question from
        the Chinese article that answers it, 0.904 once translated): then the best of both searches, by score.
        ``may_translate`` is False for a concatenation of earlier questions, no one question to translate.
        """
        margin = _WEAK_MARGIN if weak_margin is None else weak_margin
        start = time.perf_counter()
        found = self.retriever.retrieve(kb, query, self.top_k)
        timings["retrieve"] = time.perf_counter() - start
        passed = self._passing(query, found)
        strict: float | None = None
        zh = is_chinese(query)
        weak = bool(passed) and all(is_chinese(c.text) == zh for c in passed) and all(
            c.score < self.threshold(query, c.text) + margin for c in passed)
        if ((not passed or weak) and self.translate and may_translate
                and (any(is_chinese(c.text) != zh for c in found) or self._holds_other_language(kb, zh))):
            start = time.perf_counter()
            translated = self._translation(query)
            timings["translate"] = time.perf_counter() - start
            if translated:
                # A small model's translation is a guess: held to the stricter of the two languages' thresholds
                # (Chinese questions translated for the English speech let two unrelated ones through at
                # English's 0.80, answered from the model's own knowledge).
                strict = max(self.threshold(query), self.threshold(translated))
                start = time.perf_counter()
                found_there = self.retriever.retrieve(kb, translated, self.top_k)
                timings["retrieve"] += time.perf_counter() - start
                passed_there = self._passing(translated, found_there, strict)
                if not passed:
                    query = notes["translated"] = translated
                    found, passed = found_there, passed_there
                elif passed_there:
                    ids = {c.id for c in passed}
                    merged = sorted(passed + [c for c in passed_there if c.id not in ids],
                                    key=lambda c: -c.score)[:self.top_k]
                    if any(c in passed_there for c in merged):
                        notes["also_translated"] = translated
                        passed = [replace(c, rank=i) for i, c in enumerate(merged, 1)]
        notes["found"] = found
        # The refusal's notice names the threshold the best passage missed.
        best = max(found, key=lambda c: c.score, default=None)
        notes["threshold"] = strict if strict is not None else self.threshold(query, best.text if best else None)
        return passed

    def _chain(self, kb: KnowledgeBase, params: GenerationParams, usage: Usage | None,
               cancel: threading.Event) -> Any:
        llm: Any = _LoadedOnUse(self.get_llm)  # a refusal answers without the model: do not load it for one
        chat = KBQAChatModel(llm=llm, params=params, usage=usage, cancel=cancel)

        def retrieve(x: dict[str, Any]) -> list[SourceChunk]:
            passed = self.find(kb, x["query"], x["timings"], x, may_translate=x["how"] != "concat")
            if passed:  # the model will answer: load it now, so a model that cannot load fails before any event
                self.get_llm()
            return passed

        def prompt(x: dict[str, Any]) -> list[BaseMessage]:
            template: PromptTemplate = x["template"]
            earlier: list[ChatMessage] = x["earlier"]
            taken = sum(llm.count_tokens(m.content) for m in earlier)
            used = fit_context(llm, template, x["prompt_question"], x["sources"], x["zh"], params.max_tokens, taken)
            if not used:
                window = (f"the model's context ({llm.context_window} tokens: llm.context_window, at most the "
                          "model's own limit)")
                if llm.count_tokens(x["prompt_question"]) + taken > llm.context_window // 2:
                    raise ContextLengthExceeded(f"The question leaves no room for the passages in {window}: shorten "
                                                "it, or raise llm.context_window where the model allows more.")
                raise ContextLengthExceeded(  # a short question: the template and the answer's room fill it
                    f"The prompt template and the room kept for the answer ({params.max_tokens} tokens: "
                    f"llm.max_tokens, or the request's max_tokens) leave no room for the passages in {window}: lower "
                    "max_tokens, raise llm.context_window where the model allows more, or use a model with a "
                    "longer context.")
            x["notes"]["used"] = used  # x is LangChain's copy of the state; notes is shared with it
            messages = template.messages(x["prompt_question"], template.format_context(used, x["zh"]))
            system = [m for m in messages if m.role == "system"]
            # The answer gets the room the prompt leaves (a max_tokens as large as the context would
            # otherwise have pushed every passage out, or made a backend cut the prompt).
            room = llm.context_window - sum(llm.count_tokens(m.content) + _PER_MESSAGE for m in messages) - taken
            if room < chat.params.max_tokens:
                chat.params = replace(params, max_tokens=max(1, room))
            return to_langchain_messages([*system, *earlier, *(m for m in messages if m.role != "system")])

        refuse = RunnableLambda(lambda x: x["template"].refusal)
        answer = RunnableBranch((lambda x: not x["sources"], refuse), RunnableLambda(prompt) | chat | StrOutputParser())
        return RunnablePassthrough.assign(sources=RunnableLambda(retrieve)) | RunnablePassthrough.assign(answer=answer)

    def stream(self, kb: KnowledgeBase, question: str, history: Sequence[ChatMessage] = (),
               params: GenerationParams | None = None, usage: Usage | None = None) -> Iterator[AnswerEvent]:
        """Sources, then answer tokens, then the finished ``Answer``.

        Args:
            kb: The knowledge base.
            question: The question.
            history: Earlier messages of the chat (user and assistant turns), oldest first; a follow-up
                question is read in their light (see ``follow_up``).
            params: Generation settings of the answer (default: the engine's); the API passes a client's.
            usage: Filled in with the answer's token counts and finish reason (nothing when refused
                without asking the model).

        Raises:
            EmptyKnowledgeBase: the knowledge base has no documents.
        """
        if not kb.manifest.files:
            raise empty_knowledge_base(kb.name)
        template, lang = self.prompts.for_question(question)
        start = time.perf_counter()
        query, how = self._read_follow_up(question, history)
        rewritten = how == "rewritten" and query != question
        earlier: list[ChatMessage] = []
        if how == "concat":
            for q, a in self._recent(history):
                earlier += [ChatMessage("user", q), ChatMessage("assistant", a)]
        state: dict[str, Any] = {"question": question, "query": query, "template": template, "zh": lang == "zh",
                                 "prompt_question": query if rewritten else question, "earlier": earlier,
                                 "how": how, "timings": {}, "notes": {}}
        if how == "rewritten":
            state["timings"]["rewrite"] = time.perf_counter() - start
        usage = usage if usage is not None else Usage()  # its finish reason tells whether the answer was cut
        pieces: list[str] = []
        sources: list[SourceChunk] = []
        cancel = threading.Event()
        parts = self._chain(kb, params or self.params, usage, cancel).stream(state)
        try:
            for part in parts:
                if "sources" in part:
                    sources = part["sources"]
                    yield AnswerEvent("sources", sources=sources)
                if "answer" in part and part["answer"]:
                    if not pieces:
                        state["timings"]["first_token"] = time.perf_counter() - start
                    pieces.append(part["answer"])
                    yield AnswerEvent("token", text=part["answer"])
        finally:  # also when the reader stops early (a closed browser tab, a dropped API client):
            cancel.set()  # first, as closing LangChain's stream waits for the model's to end
            parts.close()
        text = "".join(pieces).strip()
        timings = {**state["timings"], "total": time.perf_counter() - start}
        say = _NOTICES[lang]
        said: list[str] = [say["read_as"].format(_quoted(query, lang))] if rewritten else []
        if how == "concat":  # the follow-up could not be read alone: say what was searched for instead
            said.append(say["concat"].format(_quoted(" / ".join(query.split("\n")), lang)))
        translated = state.get("translated")
        for key in ("translated", "also_translated"):  # searched for in the other language instead, or as well
            if searched := state.get(key):
                said.append(say[key].format(say["zh" if is_chinese(searched) else "en"], _quoted(searched, lang)))
                query = searched
        if not sources:
            best = max((c.score for c in state.get("found", [])), default=None)
            # Three decimals: a best score of 0.796 under a threshold of 0.80 must not read "0.80 (best 0.80)".
            said.append(say["below"].format(f"{state['threshold']:.3f}")
                        + (say["best"].format(f"{best:.3f}") if best is not None else "")
                        + say["refusal" if translated else "refusal_unasked"])
            answer = Answer(question, text, [], refused=True, language=lang, notice=_joined(said, say),
                            timings=timings, query=query)
        else:
            used = state["notes"].get("used", sources)
            refused = template.is_refusal(text)
            if refused or not text:
                said.append(say["no_answer" if refused else "empty"])
            seen = [question, query, *(m.content for m in earlier), *(c.text for c in used)]
            cut = usage.finish_reason == "length" or bool((params or self.params).stop)
            if not refused and (missing := unsupported_numbers(text, seen, cut) + unsupported_codes(text, seen, cut)):
                said.append(say["check_one" if len(missing) == 1 else "check"].format(say["list"].join(missing[:3])))
            answer = Answer(question, text, used, refused=refused, language=lang, notice=_joined(said, say),
                            timings=timings, query=query)
        yield AnswerEvent("done", text=text, sources=answer.sources, answer=answer)


#: Passages in the question's own language that pass by less than this are barely relevant: the question is
#: also searched for in the other language, where the knowledge base holds some (see ``QAEngine.find``).
_WEAK_MARGIN = 0.02


def _quoted(text: str, lang: str = "en") -> str:
    """``text`` in quotes, closed with a full stop unless it ends a sentence itself ("…?”." reads badly)."""
    return f"“{text}”{'' if text.rstrip()[-1:] in '?？!！.。' else '。' if lang == 'zh' else '.'}"


def _joined(said: list[str], say: dict[str, str]) -> str:
    """A notice's sentences as one line (a question quoted in it may span lines)."""
    return say["join"].join(" ".join(sentence.split()) for sentence in said)


# What an answer's notice says, in the question's language (a Chinese question's answer and refusal sentence
# are Chinese: its notice is too).
_NOTICES: dict[str, dict[str, str]] = {
    "en": {
        "join": " ", "list": ", ", "zh": "Chinese", "en": "English",
        "read_as": "Follow-up question read as: {}",
        "concat": "Follow-up question searched for together with the earlier questions: {}",
        "translated": "No passage was relevant enough to the question as asked; searched for it in {}: {}",
        "also_translated": "The passages found for the question as asked were barely relevant; also searched for "
                           "it in {}: {}",
        "below": "No passage reached the relevance threshold {}",
        "best": " (best score {})",
        "refusal": "; answered with the refusal sentence.",
        "refusal_unasked": "; answered with the refusal sentence without asking the model.",
        "no_answer": "The model found no answer in the retrieved passages.",
        "empty": "The model wrote no answer (it stopped at once, or a stop string came first): ask again, or "
                 "rephrase the question.",
        "check_one": "Check this answer against the sources: {} is in none of the passages it was written from.",
        "check": "Check this answer against the sources: {} are in none of the passages it was written from.",
    },
    "zh": {
        "join": "", "list": "、", "zh": "中文", "en": "英文",
        "read_as": "追问理解为：{}",
        "concat": "追问与之前的问题一起检索：{}",
        "translated": "没有段落与原问题足够相关，已译成{}检索：{}",
        "also_translated": "按原问题找到的段落相关度很低，又译成{}检索：{}",
        "below": "没有段落达到相关度阈值 {}",
        "best": "（最高得分 {}）",
        "refusal": "，以拒答句作答。",
        "refusal_unasked": "，未询问模型，以拒答句作答。",
        "no_answer": "模型在检索到的段落中没有找到答案。",
        "empty": "模型没有写出回答（一开始就停止了，或先遇到了停止字符串）：请再问一次，或换个问法。",
        "check_one": "请对照来源核对此回答：{} 不在它所依据的任何段落中。",
        "check": "请对照来源核对此回答：{} 都不在它所依据的任何段落中。",
    },
}


#: Tokens a chat template adds around each message (role markers), an allowance.
_PER_MESSAGE = 8


def fit_context(llm: LLM, template: PromptTemplate, question: str, sources: Sequence[SourceChunk], zh: bool,
                max_tokens: int, taken: int = 0) -> list[SourceChunk]:
    """The leading sources that fit the model's context beside the prompt, ``taken`` tokens more (earlier
    turns of a chat) and the answer's ``max_tokens``, of which the passages yield no more than half the room
    left: the answer then gets what they leave.

    The first source is shortened rather than dropped, so a question always gets some context (none only
    when the question alone fills the context).
    """
    frame = sum(llm.count_tokens(m.content) for m in template.messages(question, "")) + taken + 64
    left = llm.context_window - frame
    budget = left - min(max_tokens, left // 2)
    used: list[SourceChunk] = []
    for src in sources:
        if llm.count_tokens(template.format_context([*used, src], zh)) <= budget:
            used.append(src)
            continue
        if not used and budget > 0:
            text = src.text
            while text and llm.count_tokens(template.format_context([replace(src, text=text)], zh)) > budget:
                text = text[: int(len(text) * 0.8)]
            if text:
                used.append(replace(src, text=text))
        break
    return used
