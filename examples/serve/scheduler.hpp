// examples/serve/scheduler.hpp — continuous batching over a paged KV cache: which requests run
// in the next forward pass, how many tokens each, and whose pages go when memory runs out.
//
// The scheduler plans pages itself, as vLLM's does: a sequence of L tokens holds ceil(L / page)
// pages (all layers and K/V slots share one block table, so "a page" means that token range in
// every slot). It never touches the cache; each step it hands out a plan, the engine carries it
// out (remove the sequences of preempted requests, add sequences for admitted ones, run one
// batched forward pass) and reports the sampled tokens back:
//
//     scheduler s(params);
//     for (const request& r : requests) s.submit(r);
//     while (!s.done()) run_step(s, engine, clock);     // plan -> engine -> apply
//
// One step, in order:
//   1. Running requests, oldest admission first. One with one token pending (a decode) gets that
//      token; one still prefilling (its prompt, or prompt + generated tokens after a preemption)
//      gets the next chunk, within --chunk prefill tokens per step. When the free pages cannot
//      hold a decode's next token, the most recently admitted running request is preempted: its
//      pages are freed, it goes back to the front of the queue, and later recomputes its prompt
//      and the tokens it had generated. The oldest request therefore always makes progress.
//   2. If nothing was preempted, arrived requests are admitted first come, first served, while a
//      sequence id is free and the free pages (less what running prefills still need) hold the
//      whole prefill of the next one and the headroom of --reserve-tokens more tokens for every
//      running request and the new one; each gets a prefill chunk from what is left of --chunk.
// A request's tokens are prompt ++ generated; `computed` of them are in the cache. A chunk that
// reaches the last one yields logits from which the next token is sampled, so a decode step and
// the last chunk of a recompute are the same thing: greedy tokens do not depend on preemption.
#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"

#include "examples/serve/requests.hpp"

namespace kvcar::examples::serve {

struct scheduler_params {
    int n_pages = 0;        // pages in the KV budget
    int page_size = 16;       // tokens per page
    int max_sequences = 256;  // requests running at once (sequence ids of the cache)
    int chunk = 512;          // prefill tokens per step (decode tokens come on top)
    int max_tokens = 0;       // tokens one sequence may hold (the model's context)
    // Admission headroom: a request is admitted only if the pages left after its prefill also
    // hold the next `reserve_tokens` tokens of every running request and of itself (at most
    // what each may still generate). Without it (0) a full pool admits the request a freed page
    // range just fits, and the next decode step that crosses a page preempts it again: its whole
    // prompt is recomputed for nothing, over and over at tight budgets.
    int reserve_tokens = 0;
};

enum class phase { waiting, running, finished };

/// A request and where it stands.
struct request_state {
    request req;
    std::vector<int> generated;  // [tokens generated so far]
    phase where = phase::waiting;
    int sequence = -1;  // the engine's sequence id while running
    int computed = 0;   // tokens of prompt ++ generated in the cache (planned)
    int pages = 0;      // pages those tokens hold: ceil(computed / page_size)
    int preemptions = 0;
    double first_token_time = -1, last_token_time = -1, finish_time = -1;

    int length() const { return int(req.prompt.size() + generated.size()); }
    int token(int i) const {
        const int n = int(req.prompt.size());
        return i < n ? req.prompt[std::size_t(i)] : generated[std::size_t(i - n)];
    }
};

/// One request's tokens in a step: tokens [begin, begin + count) of prompt ++ generated.
struct step_item {
    int request = 0;
    int begin = 0, count = 0;
    bool samples = false;  // the chunk ends at the last token: sample the next one
};

/// What the engine does for one step, in this order.
struct step_plan {
    std::vector<int> release;   // sequence ids of preempted requests: remove them first
    std::vector<int> admitted;  // requests that need a new sequence (assign_sequence)
    std::vector<step_item> items;  // one batched forward pass, item order
};

class scheduler {
public:
    explicit scheduler(scheduler_params p) : p_(p), free_pages_(p.n_pages) {
        require(p.n_pages > 0 && p.page_size > 0 && p.max_sequences > 0 && p.chunk > 0 &&
                    p.max_tokens > 0,
                "kvcar-serve: pages, page size, sequences, chunk and max tokens must be positive");
    }

    /// Queues `r`. Requests must come in order of arrival. Refuses (kvcar::error) one that could
    /// never run: more tokens than a sequence may hold, or more pages than the whole budget.
    void submit(request r) {
        require(!r.prompt.empty() && r.max_new_tokens > 0,
                "kvcar-serve: request '" + r.id + "' needs a prompt and max_new_tokens > 0");
        require(requests_.empty() || r.arrival >= requests_.back().req.arrival,
                "kvcar-serve: request '" + r.id + "' arrives before the one submitted before it");
        // The last generated token is sampled, never fed back, so the cache holds one fewer.
        const long long tokens = (long long)r.prompt.size() + r.max_new_tokens - 1;
        const std::string what = "kvcar-serve: request '" + r.id + "' (prompt " +
                                 std::to_string(r.prompt.size()) + " + " +
                                 std::to_string(r.max_new_tokens) + " new tokens) ";
        require(tokens <= p_.max_tokens, what + "needs " + std::to_string(tokens) +
                                             " cached tokens, more than a sequence holds (" +
                                             std::to_string(p_.max_tokens) + ")");
        const long long pages = (tokens + p_.page_size - 1) / p_.page_size;
        require(pages <= p_.n_pages,
                what + "needs " + std::to_string(pages) + " pages of " +
                    std::to_string(p_.page_size) + " tokens, more than the whole KV budget (" +
                    std::to_string(p_.n_pages) + " pages): it could never run; raise the "
                    "budget or shorten the request");
        request_state s;
        s.req = std::move(r);
        requests_.push_back(std::move(s));
        waiting_.push_back(int(requests_.size()) - 1);
    }

    step_plan plan(double now) {
        step_plan p;
        int budget = p_.chunk;
        bool preempted = false;
        // 1. Running requests, oldest first. running_ may shrink from the back as we go.
        for (std::size_t i = 0; i < running_.size(); ++i) {
            const int r = running_[i];
            request_state& q = requests_[std::size_t(r)];
            const int pending = q.length() - q.computed;
            int count = pending == 1 ? 1 : std::min(pending, budget);
            if (count == 0) continue;
            bool self_preempted = false;
            for (;;) {
                const int room = (q.pages + free_pages_) * p_.page_size - q.computed;
                if (room >= count) break;
                if (pending > 1 && room > 0) {  // a prefill takes what fits
                    count = room;
                    break;
                }
                const int victim = running_.back();
                preempt(victim, p);
                preempted = true;
                if (victim == r) {
                    self_preempted = true;
                    break;
                }
            }
            if (self_preempted) break;  // r was the newest: nothing runs after it
            if (pending > 1) budget -= count;
            schedule(r, count, p);
        }

        // 2. Admissions, first come first served, while everything they need is free.
        if (!preempted) {
            int owed = 0;  // pages running prefills still need to finish, and their headroom
            for (int r : running_) {
                const request_state& q = requests_[std::size_t(r)];
                owed += std::max(0, pages_for(q.length()) - q.pages) + headroom(q);
            }
            while (!waiting_.empty() && budget > 0 && int(running_.size()) < p_.max_sequences) {
                const int r = waiting_.front();
                request_state& q = requests_[std::size_t(r)];
                if (q.req.arrival > now) break;
                const int need = pages_for(q.length());
                // With nothing running, the request always fits (submit() checked its pages).
                if (need + (running_.empty() ? 0 : headroom(q)) > free_pages_ - owed) break;
                waiting_.pop_front();
                running_.push_back(r);
                q.where = phase::running;
                p.admitted.push_back(r);
                const int count = std::min(q.length(), budget);
                budget -= count;
                owed += need - pages_for(count) + headroom(q);
                schedule(r, count, p);
            }
        }
        peak_running_ = std::max(peak_running_, int(running_.size()));
        peak_pages_ = std::max(peak_pages_, p_.n_pages - free_pages_);
        return p;
    }

    /// The engine gave request `r` (just admitted) sequence id `seq`.
    void assign_sequence(int r, int seq) { requests_[std::size_t(r)].sequence = seq; }

    /// Records the tokens sampled for the plan's items (next[k] for item k; ignored where the
    /// item does not sample) at time `now`; returns the sequence ids of requests that finished,
    /// for the engine to remove.
    std::vector<int> apply(const step_plan& p, std::span<const int> next, double now) {
        require(next.size() == p.items.size(), "kvcar-serve: one sampled token per item");
        std::vector<int> done;
        for (std::size_t k = 0; k < p.items.size(); ++k) {
            if (!p.items[k].samples) continue;
            request_state& q = requests_[std::size_t(p.items[k].request)];
            q.generated.push_back(next[k]);
            ++generated_tokens_;
            if (q.first_token_time < 0) {
                q.first_token_time = now;
            } else {
                token_gaps_.push_back(now - q.last_token_time);
            }
            q.last_token_time = now;
            if (int(q.generated.size()) < q.req.max_new_tokens) continue;
            q.where = phase::finished;
            q.finish_time = now;
            done.push_back(q.sequence);
            free_pages_ += q.pages;
            q.pages = 0;
            q.sequence = -1;
            running_.erase(std::find(running_.begin(), running_.end(), p.items[k].request));
            ++finished_;
        }
        return done;
    }

    /// Ends the run early: every running request gives its sequence back (returned, for the
    /// engine to remove) and stays unfinished.
    std::vector<int> abandon() {
        std::vector<int> seqs;
        for (int r : running_) {
            request_state& q = requests_[std::size_t(r)];
            seqs.push_back(q.sequence);
            free_pages_ += q.pages;
            q.pages = 0;
            q.computed = 0;
            q.sequence = -1;
            q.where = phase::waiting;
        }
        running_.clear();
        return seqs;
    }

    bool done() const { return finished_ == int(requests_.size()); }
    /// Whether some request is running (else the engine may sleep until next_arrival()).
    bool busy() const { return !running_.empty(); }
    /// Arrival time of the first waiting request (meaningful when one waits).
    double next_arrival() const {
        return waiting_.empty() ? 0 : requests_[std::size_t(waiting_.front())].req.arrival;
    }

    const std::vector<request_state>& requests() const { return requests_; }
    const scheduler_params& params() const { return p_; }
    int free_pages() const { return free_pages_; }
    int running() const { return int(running_.size()); }
    int waiting() const { return int(waiting_.size()); }
    int finished() const { return finished_; }
    int preemptions() const { return preemptions_; }
    int peak_running() const { return peak_running_; }
    int peak_pages() const { return peak_pages_; }
    long long generated_tokens() const { return generated_tokens_; }
    /// Seconds between consecutive tokens of a request, over all requests.
    const std::vector<double>& token_gaps() const { return token_gaps_; }

private:
    int pages_for(int tokens) const { return (tokens + p_.page_size - 1) / p_.page_size; }

    /// Pages request q's next reserve_tokens tokens take beyond its current tokens, counting
    /// only the tokens it may still cache (the last generated token is never fed back).
    int headroom(const request_state& q) const {
        const int last = int(q.req.prompt.size()) + q.req.max_new_tokens - 1;
        const int upto = std::min(last, q.length() + p_.reserve_tokens);
        return std::max(0, pages_for(upto) - pages_for(q.length()));
    }

    /// Plans `count` more tokens for running request `r`, taking the pages they need.
    void schedule(int r, int count, step_plan& p) {
        request_state& q = requests_[std::size_t(r)];
        const int pages = pages_for(q.computed + count);
        free_pages_ -= pages - q.pages;
        q.pages = pages;
        p.items.push_back({r, q.computed, count, q.computed + count == q.length()});
        q.computed += count;
    }

    /// Frees running request `victim`'s pages and queues it first, to recompute later.
    void preempt(int victim, step_plan& p) {
        request_state& q = requests_[std::size_t(victim)];
        p.release.push_back(q.sequence);
        free_pages_ += q.pages;
        q.pages = 0;
        q.computed = 0;
        q.sequence = -1;
        q.where = phase::waiting;
        ++q.preemptions;
        ++preemptions_;
        running_.pop_back();
        waiting_.push_front(victim);
    }

    scheduler_params p_;
    std::vector<request_state> requests_;  // [submitted requests]
    std::deque<int> waiting_;  // not running, not finished; front first (arrival order)
    std::vector<int> running_;  // admission order, oldest first
    int free_pages_;
    int finished_ = 0, preemptions_ = 0, peak_running_ = 0, peak_pages_ = 0;
    long long generated_tokens_ = 0;
    std::vector<double> token_gaps_;
};

/// One step: plan, carry it out on `engine`, apply. The engine has add_sequence() -> id,
/// remove_sequence(id) and next_tokens(sequences, counts, tokens) -> the greedy next token of
/// each item (after its last token); `clock()` gives seconds since the start. Returns the plan
/// it ran. The engine samples, not the scheduler: a GPU engine then sends back one id per item,
/// not a row of logits.
template <class Engine, class Clock>
step_plan run_step(scheduler& s, Engine& engine, Clock&& clock) {
    step_plan p = s.plan(clock());
    for (int seq : p.release) engine.remove_sequence(seq);
    for (int r : p.admitted) s.assign_sequence(r, engine.add_sequence());
    if (p.items.empty()) return p;

    std::vector<int> sequences, counts, tokens;  // [items], [items], [Σ counts]
    for (const step_item& it : p.items) {
        const request_state& q = s.requests()[std::size_t(it.request)];
        sequences.push_back(q.sequence);
        counts.push_back(it.count);
        for (int t = it.begin; t < it.begin + it.count; ++t) tokens.push_back(q.token(t));
    }
    const std::vector<int> next = engine.next_tokens(sequences, counts, tokens);
    require(next.size() == p.items.size(),
            "run_step: the engine returned " + std::to_string(next.size()) + " tokens for " +
                std::to_string(p.items.size()) + " items");
    for (int seq : s.apply(p, next, clock())) engine.remove_sequence(seq);
    return p;
}

}  // namespace kvcar::examples::serve
