# kvcar-finetune (examples/tools/finetune.cpp): stage 2 of the KV-CAR paper, fine-tuning a codec
# file's autoencoders through the frozen CPU GPT-2 or Llama (examples/models/kv_train.hpp with
# gpt2/gpt2_train.hpp / llama/llama_train.hpp).
# Included from examples/CMakeLists.txt after find_package(Threads).
add_executable(kvcar-finetune ${CMAKE_CURRENT_LIST_DIR}/tools/finetune.cpp)
target_link_libraries(kvcar-finetune PRIVATE kvcar::kvcar Threads::Threads)
# The source includes "examples/models/..." and "examples/common/...".
target_include_directories(kvcar-finetune PRIVATE ${PROJECT_SOURCE_DIR})
# -O3 in every build type; never -ffast-math (the trainer's forward must round as inference does).
target_compile_options(kvcar-finetune PRIVATE -O3)
kvcar_warnings(kvcar-finetune)
