# FRUGAL_FUZZ=ON: an ASan + UBSan build (clang only) of the library and the tests, with libFuzzer
# coverage instrumentation, plus the fuzz harnesses tests/fuzz/fuzz_<format>.cpp (ctest label `fuzz`).
# Configure with -DFRUGAL_CUDA=OFF -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang.
# Included before any target is defined, so the flags reach every target; the harnesses are added
# by tests/fuzz/CMakeLists.txt at the end of the top-level file.
option(FRUGAL_FUZZ "ASan + UBSan build with libFuzzer harnesses (clang)" OFF)
if(FRUGAL_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "FRUGAL_FUZZ=ON needs clang (libFuzzer): -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang")
  endif()
  if(FRUGAL_CUDA)
    message(FATAL_ERROR "FRUGAL_FUZZ=ON builds without CUDA: add -DFRUGAL_CUDA=OFF")
  endif()
  # -gline-tables-only: file:line in sanitizer reports at a fraction of full -g's compile time.
  set(FRUGAL_SAN_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
      -gline-tables-only)
  add_compile_options(${FRUGAL_SAN_FLAGS} -fsanitize=fuzzer-no-link)
  add_link_options(-fsanitize=address,undefined)
  message(STATUS "frugal: FRUGAL_FUZZ ON (ASan + UBSan + libFuzzer instrumentation)")
endif()
