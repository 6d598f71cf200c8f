// Docs that compile: tests/docs/doc_blocks.cmake turns every ```cpp and ```cuda block of
// README.md and docs/*.md into a translation unit of this executable (C++ blocks) or of the GPU
// one (CUDA blocks), so a block that stops compiling breaks the test build, and a complete
// program also runs here. This file checks the extraction itself: the blocks compiled are all the
// blocks there are, and no block hides behind a label the extractor does not know.
#include "catch.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifndef KVCAR_DOC_BLOCK_COUNT
#error "tests/docs/blocks.cpp needs KVCAR_DOC_BLOCK_COUNT from kvcar_doc_blocks() (doc_blocks.cmake)"
#endif

namespace {

namespace fs = std::filesystem;

std::vector<fs::path> documents() {
    const fs::path root(KVCAR_SOURCE_DIR);
    std::vector<fs::path> docs{root / "README.md"};
    for (const auto& entry : fs::directory_iterator(root / "docs"))
        if (entry.path().extension() == ".md") docs.push_back(entry.path());
    return docs;
}

/// The info strings of a document's opening fences, in order ("" for an unlabelled block).
std::vector<std::string> fence_labels(const fs::path& doc) {
    std::ifstream in(doc);
    REQUIRE(in.good());
    std::vector<std::string> labels;
    std::string line;
    bool inside = false;
    while (std::getline(in, line)) {
        if (line.rfind("```", 0) != 0) continue;
        if (!inside) {
            std::string label = line.substr(3);
            while (!label.empty() && (label.back() == ' ' || label.back() == '\r')) label.pop_back();
            labels.push_back(label);
        }
        inside = !inside;
    }
    REQUIRE_FALSE(inside);  // every block is closed
    return labels;
}

bool compiled_label(const std::string& l) {
    return l == "cpp" || l == "c++" || l == "cuda" || l == "cu";
}

}  // namespace

TEST_CASE("docs: every C++ and CUDA block of the docs is compiled", "[docs]") {
    int blocks = 0;
    for (const fs::path& doc : documents())
        for (const std::string& label : fence_labels(doc)) blocks += compiled_label(label) ? 1 : 0;
    INFO("blocks in the docs now: " << blocks << "; extracted at configure time: "
                                    << KVCAR_DOC_BLOCK_COUNT << " (re-run cmake)");
    REQUIRE(blocks == KVCAR_DOC_BLOCK_COUNT);
    REQUIRE(blocks >= 8);  // README's program, getting_started's, device_api's four, ...
}

TEST_CASE("docs: code blocks are labelled with a language the extractor knows", "[docs]") {
    // C and C++ under another label would silently escape compilation; so would an unlabelled
    // block (say `text` for output).
    const std::vector<std::string> known{"cpp", "c++", "cuda", "cu", "sh", "cmake", "json",
                                         "ini", "text"};
    for (const fs::path& doc : documents()) {
        for (const std::string& label : fence_labels(doc)) {
            INFO(doc.filename().string() << ": a block labelled '" << label << "'");
            bool ok = false;
            for (const std::string& k : known) ok = ok || label == k;
            CHECK(ok);
        }
    }
}
