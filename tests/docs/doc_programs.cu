// test_docs_gpu: the CUDA code blocks of the docs (device_api.md's program and fragments), which
// tests/docs/area.cmake adds to this executable; this file only makes the folder a GPU area.
