# The code blocks of README.md and docs/*.md: C++ blocks join test_docs, CUDA blocks join
# test_docs_gpu (doc_blocks.cmake extracts them at configure time).
include(${CMAKE_CURRENT_LIST_DIR}/doc_blocks.cmake)
kvcar_doc_blocks(test_docs test_docs_gpu)
