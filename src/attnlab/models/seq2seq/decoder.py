"""The attentional decoder: one RNN step per target token, reading the source via attention.

Per step, with e = E y_{t-1} the previous target embedding:

- ``none`` (Cho et al. 2014, Bahdanau's RNNencdec baseline): s_t = RNN(s_{t-1}, [e; c]) with
  the *same* summary vector c at every step: the fixed-length bottleneck.
- ``bahdanau`` (Bahdanau et al. 2014): c_t = attend(s_{t-1}) (eq. 5-6), then
  s_t = RNN(s_{t-1}, [e; c_t]) (eq. 4). Both read out through a maxout layer
  t̃ = U_o s + V_o e + C_o c, t = max over pairs (appendix A.2.2); we read out from s_t
  (eq. 4's g(y_{t-1}, s_t, c_t)) where the appendix writes s_{t-1}.
- ``luong-*`` (Luong et al. 2015): h_t = RNN(h_{t-1}, [e; h̃_{t-1}]) with input feeding (§3.3),
  c_t = attend(h_t) (§3.1/3.2), h̃_t = tanh(W_c [c_t; h_t]) (eq. 5), p(y_t) = softmax(W_s h̃_t)
  (eq. 6).

Teacher forcing (:meth:`AttentionalDecoder.forward`) runs the RNN over the whole target in one
call where nothing forces a loop (``none``; Luong without input feeding), and step by step
otherwise; the output projection always runs once over all steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.models.seq2seq.encoder import PAD_ID, Memory, make_rnn
from attnlab.models.seq2seq.seq2seq_config import Seq2SeqConfig
from attnlab.modules.bahdanau import Alignment, BahdanauAttention
from attnlab.modules.luong import make_luong

Hidden = Tensor | tuple[Tensor, Tensor]  # GRU: (layers, B, H); LSTM: (h, c)


@dataclass
class DecoderState:
    hidden: Hidden
    feed: Tensor  # (B, H): h̃_{t-1} for input feeding; zeros before the first step
    t: int = 0  # the next target position (local-m's p_t = t)

    def index_select(self, idx: Tensor) -> DecoderState:
        """Reorder batch entries (beam search backpointers): idx (B',)."""
        h = (tuple(x.index_select(1, idx) for x in self.hidden) if isinstance(self.hidden, tuple)
             else self.hidden.index_select(1, idx))
        return DecoderState(h, self.feed.index_select(0, idx), self.t)  # type: ignore[arg-type]


@dataclass
class DecoderOutput:
    logits: Tensor  # (B, Lt, V)
    weights: Tensor | None = None  # (B, Lt, Ls): alignments; None for "none"
    centres: Tensor | None = None  # (B, Lt): local-p's p_t


@dataclass
class StepOutput:
    logits: Tensor  # (B, V)
    state: DecoderState
    weights: Tensor | None = None  # (B, Ls)
    centres: Tensor | None = None  # (B,)


def _top(hidden: Hidden) -> Tensor:
    """The top layer's state: (B, H)."""
    return hidden[0][-1] if isinstance(hidden, tuple) else hidden[-1]


class AttentionalDecoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, e, v = cfg.hidden, cfg.emb_dim, cfg.tgt_vocab_size
        kind = cfg.attention
        self.luong = kind.startswith("luong")
        self.embed = nn.Embedding(v, e, padding_idx=PAD_ID)
        self.drop = nn.Dropout(cfg.dropout)
        self.bridge = nn.Linear(h, h)  # s_0 = tanh(W_s ←h_1) (A.2.2), here from [→h; ←h]
        attn_dim = cfg.attn_dim or h
        self.attention: nn.Module | None = None
        if kind == "bahdanau":
            self.attention = BahdanauAttention(h, h, attn_dim)
        elif self.luong:
            self.attention = make_luong(kind, h, h, window=cfg.window,
                                        score=cfg.local_score, attn_dim=attn_dim)  # type: ignore[arg-type]
        feeds = not self.luong or cfg.input_feed  # [e; c] or [e; h̃_{t-1}]
        self.rnn = make_rnn(cfg.rnn, e + h if feeds else e, h, cfg.layers, cfg.dropout)
        if self.luong:
            self.combine = nn.Linear(2 * h, h, bias=False)  # W_c (eq. 5)
        else:
            self.readout = nn.Linear(2 * h + e, 2 * h)  # U_o, V_o, C_o before maxout (A.2.2)
        self.out = nn.Linear(h, v)  # W_s (eq. 6) / W_o (A.2.2)

    # -- state --------------------------------------------------------------------------
    def init_state(self, memory: Memory) -> DecoderState:
        s0 = torch.tanh(self.bridge(memory.summary))  # (B, H)
        layers = s0.unsqueeze(0).repeat(self.cfg.layers, 1, 1)  # (layers, B, H)
        hidden: Hidden = (layers, torch.zeros_like(layers)) if self.cfg.rnn == "lstm" else layers
        return DecoderState(hidden, torch.zeros_like(s0), 0)

    def prepare(self, memory: Memory) -> Memory:
        """Cache the attention's key features (U_a h_j, W_a h̄_s, ...) once per sentence."""
        if self.attention is not None:
            memory.keys = self.attention.project_keys(  # type: ignore[operator]
                memory.states, memory.lengths)
        return memory

    # -- one step ----------------------------------------------------------------------
    def _attend(self, query: Tensor, memory: Memory, t: int | Tensor) -> Alignment:
        """query (B, Lq, H) -> Alignment; t: the target position(s) for local-m."""
        assert self.attention is not None
        bsz, q_len = query.shape[:2]
        pos = (torch.full((bsz, 1), t, dtype=torch.long, device=query.device)
               if isinstance(t, int) else t)
        return self.attention(query, memory.states, memory.lengths, keys=memory.keys,
                              allowed=memory.allowed, positions=pos.expand(bsz, q_len))

    def _advance(self, e: Tensor, state: DecoderState, memory: Memory
                 ) -> tuple[Tensor, DecoderState, Alignment | None]:
        """e (B, E) -> pre-output features (B, F), the next state and the alignment."""
        al = None
        if self.luong:
            x = torch.cat([e, state.feed], -1) if self.cfg.input_feed else e  # §3.3
            out, hidden = self.rnn(x.unsqueeze(1), state.hidden)  # h_t: (B, 1, H)
            al = self._attend(out, memory, state.t)  # reads h_t (Luong)
            feat = torch.tanh(self.combine(torch.cat([al.context, out], -1)))[:, 0]  # h̃_t eq. 5
            return feat, DecoderState(hidden, feat, state.t + 1), al
        if self.attention is None:
            c = memory.summary  # the one fixed vector (B, H)
        else:
            al = self._attend(_top(state.hidden).unsqueeze(1), memory, state.t)  # s_{t-1}
            c = al.context[:, 0]  # c_t: (B, H)
        out, hidden = self.rnn(torch.cat([e, c], -1).unsqueeze(1), state.hidden)  # s_t
        feat = torch.cat([out[:, 0], e, c], -1)  # (B, 2H + E): readout input
        return feat, DecoderState(hidden, state.feed, state.t + 1), al

    def _logits(self, feat: Tensor) -> Tensor:
        """(..., F) -> (..., V)."""
        if not self.luong:
            t = self.readout(feat)  # t̃: (..., 2H)
            feat = t.view(*t.shape[:-1], -1, 2).amax(-1)  # maxout over pairs: (..., H)
        return self.out(self.drop(feat))

    def step(self, y_prev: Tensor, state: DecoderState, memory: Memory) -> StepOutput:
        """One decoding step: y_prev (B,) ids -> logits (B, V), weights (B, Ls)."""
        feat, state, al = self._advance(self.drop(self.embed(y_prev)), state, memory)
        if al is None:
            return StepOutput(self._logits(feat), state)
        return StepOutput(self._logits(feat), state, al.weights[:, 0],
                          None if al.centres is None else al.centres[:, 0])

    # -- teacher forcing ---------------------------------------------------------------
    def forward(self, tgt_in: Tensor, memory: Memory, state: DecoderState | None = None
                ) -> DecoderOutput:
        """tgt_in (B, Lt): <s> y_1 .. y_{n} -> logits (B, Lt, V) and alignments (B, Lt, Ls)."""
        state = self.init_state(memory) if state is None else state
        emb = self.drop(self.embed(tgt_in))  # (B, Lt, E)
        if not self.cfg.sequential:
            return self._parallel(emb, state, memory)
        feats, weights, centres = [], [], []
        # unbind, not emb[:, t]: the backward of T selects would build T zero (B, Lt, E) grads
        for e in emb.unbind(1):
            feat, state, al = self._advance(e, state, memory)
            feats.append(feat)
            if al is not None:
                weights.append(al.weights[:, 0])  # (B, Ls)
                if al.centres is not None:
                    centres.append(al.centres[:, 0])
        logits = self._logits(torch.stack(feats, 1))  # (B, Lt, F) -> (B, Lt, V)
        return DecoderOutput(logits, torch.stack(weights, 1) if weights else None,
                             torch.stack(centres, 1) if centres else None)

    def _parallel(self, emb: Tensor, state: DecoderState, memory: Memory) -> DecoderOutput:
        """No step depends on the previous step's attention: one RNN call for all steps."""
        bsz, tgt_len, _ = emb.shape
        if self.attention is None:
            c = memory.summary.unsqueeze(1).expand(bsz, tgt_len, -1)  # (B, Lt, H)
            out, _ = self.rnn(torch.cat([emb, c], -1), state.hidden)  # (B, Lt, H)
            return DecoderOutput(self._logits(torch.cat([out, emb, c], -1)))
        out, _ = self.rnn(emb, state.hidden)  # h_1 .. h_n: (B, Lt, H)
        pos = torch.arange(tgt_len, device=emb.device).unsqueeze(0)  # (1, Lt)
        al = self._attend(out, memory, pos + state.t)
        feat = torch.tanh(self.combine(torch.cat([al.context, out], -1)))  # h̃: (B, Lt, H)
        return DecoderOutput(self._logits(feat), al.weights, al.centres)
