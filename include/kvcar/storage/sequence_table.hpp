// kvcar/storage/sequence_table.hpp — which sequence ids are live and how many tokens each has
// appended to every layer: the sequence bookkeeping shared by kv_cache (host) and
// gpu::device_kv_cache (device records, host bookkeeping).
//
// Lengths are per layer because a forward pass appends layer by layer: between layer 3's append
// and layer 4's, a sequence is one token longer in layers 0..3 than in 4..n. What attention may
// use in every layer is the shortest of them, length(seq).
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"

namespace kvcar {

/// Live flags and per-layer lengths of `max_sequences` sequence ids. Checked accessors throw
/// kvcar::error prefixed with the owner's name (`who`), changing nothing.
class sequence_table {
public:
    /// `max_sequences` ids over `n_layers` layers, none live. Throws kvcar::error unless both are
    /// positive.
    sequence_table(int max_sequences, int n_layers, std::string who)
        : max_sequences_(max_sequences), n_layers_(n_layers), who_(std::move(who)) {
        require(max_sequences > 0 && n_layers > 0,
                who_ + ": max_sequences and n_layers must be positive (got " +
                    std::to_string(max_sequences) + ", " + std::to_string(n_layers) + ")");
        live_.assign(std::size_t(max_sequences), 0);
        lengths_.assign(std::size_t(max_sequences) * std::size_t(n_layers), 0);
    }

    /// Sequence ids: 0 .. max_sequences() - 1.
    int max_sequences() const { return max_sequences_; }
    /// Layers each sequence has a length in.
    int n_layers() const { return n_layers_; }
    /// Whether `seq` was handed out by add() and not removed since; false for any out-of-range id.
    bool is_live(int seq) const {
        return seq >= 0 && seq < max_sequences_ && live_[std::size_t(seq)] != 0;
    }
    /// How many ids are live.
    int live_sequences() const {
        int n = 0;
        for (char l : live_) n += l ? 1 : 0;
        return n;
    }
    /// Marks the lowest free id live, with length 0 in every layer, and returns it; throws when
    /// all are in use.
    int add() {
        for (int seq = 0; seq < max_sequences_; ++seq) {
            if (live_[std::size_t(seq)]) continue;
            live_[std::size_t(seq)] = 1;
            return seq;
        }
        throw error("kvcar: " + who_ + ": all " + std::to_string(max_sequences_) +
                    " sequences are in use");
    }
    /// Marks `seq` (in range, not live) live with length 0: for copying another cache's ids.
    void add_at(int seq) {
        require(seq >= 0 && seq < max_sequences_ && !live_[std::size_t(seq)],
                who_ + ": sequence " + std::to_string(seq) + " is out of range or already live");
        live_[std::size_t(seq)] = 1;
    }
    /// Marks `seq` free and zeroes its lengths. Throws unless it is live.
    void remove(int seq) {
        check_live(seq);
        live_[std::size_t(seq)] = 0;
        for (int layer = 0; layer < n_layers_; ++layer) at(seq, layer) = 0;
    }

    /// Tokens appended to every layer: the shortest of `seq`'s layer lengths.
    int length(int seq) const {
        check_live(seq);
        int shortest = at(seq, 0);
        for (int layer = 1; layer < n_layers_; ++layer)
            if (at(seq, layer) < shortest) shortest = at(seq, layer);
        return shortest;
    }
    /// Tokens appended to layer `layer` of `seq`.
    int length(int seq, int layer) const {
        check_live(seq);
        check_layer(layer);
        return at(seq, layer);
    }
    /// The longest of `seq`'s layer lengths: the tokens its storage must hold.
    int longest(int seq) const {
        check_live(seq);
        int most = 0;
        for (int layer = 0; layer < n_layers_; ++layer)
            if (at(seq, layer) > most) most = at(seq, layer);
        return most;
    }

    /// The length of (seq, layer), unchecked: for owners that checked already.
    int& at(int seq, int layer) {
        return lengths_[std::size_t(seq) * std::size_t(n_layers_) + std::size_t(layer)];
    }
    /// The length of (seq, layer), unchecked.
    int at(int seq, int layer) const {
        return lengths_[std::size_t(seq) * std::size_t(n_layers_) + std::size_t(layer)];
    }

    /// Throws "kvcar: <who>: sequence N is not live" unless `seq` is live.
    void check_live(int seq) const {
        if (!is_live(seq)) {
            throw error("kvcar: " + who_ + ": sequence " + std::to_string(seq) + " is not live");
        }
    }
    /// Throws "kvcar: <who>: layer L out of range [0, n)" unless `layer` is a layer.
    void check_layer(int layer) const {
        if (layer < 0 || layer >= n_layers_) {
            throw error("kvcar: " + who_ + ": layer " + std::to_string(layer) +
                        " out of range [0, " + std::to_string(n_layers_) + ")");
        }
    }

private:
    int max_sequences_, n_layers_;
    std::string who_;
    std::vector<char> live_;    // [sequence]
    std::vector<int> lengths_;  // [sequence][layer] tokens appended
};

}  // namespace kvcar
