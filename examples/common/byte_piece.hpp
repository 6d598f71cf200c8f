// examples/common/byte_piece.hpp — the byte-fallback pieces of SentencePiece-style vocabularies
// ("<0x0A>" stands for the byte 0x0A), which tokenizer.model, tokenizer.json (Metaspace with
// byte_fallback) and llama2.c's tokenizer.bin all spell the same way.
#pragma once

#include <cstddef>
#include <string_view>

namespace kvcar::examples {

/// "<0xHH>" -> HH, else -1. Only this exact 6-character form (either hex case) is a byte piece.
constexpr int byte_piece_value(std::string_view piece) {
    if (piece.size() != 6 || !piece.starts_with("<0x") || piece[5] != '>') return -1;
    int v = 0;
    for (std::size_t k = 3; k < 5; ++k) {
        const char c = piece[k];
        int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

}  // namespace kvcar::examples
