# Megalodon trainer. `make` builds build/megalodon and the test binaries; `make test` installs what is
# missing (scripts/setup.sh), builds and runs the whole suite; `make deps` only installs.
# Optional parts are detected and reported; the build works without each of them.

CC      ?= gcc
BUILD   ?= build
OPT     ?= -O3 -march=native
# NO_BLAS=1, NO_OPENMP=1, NO_ZLIB=1, NO_HDF5=1, NO_MPI=1, NO_CUDA=1 force a part off (used by tests of the
# fallbacks).

CFLAGS_BASE := -std=c11 -Wall -Wextra -Wno-unknown-pragmas -D_GNU_SOURCE -g $(OPT) -fno-math-errno
CPPFLAGS    := -I. -MMD -MP
LDLIBS      := -lm
FEATURES    :=

# ---- OpenMP -----------------------------------------------------------------------------------------
ifndef NO_OPENMP
  HAVE_OPENMP := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo 1)
endif
ifeq ($(HAVE_OPENMP),1)
  CFLAGS_BASE += -fopenmp
  LDLIBS      += -fopenmp
  FEATURES    += OpenMP:yes
else
  FEATURES    += OpenMP:no
endif

# ---- BLAS (OpenBLAS; the OpenMP flavour is preferred so BLAS calls inside parallel regions stay serial)
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null)
ifndef NO_BLAS
  ifneq ($(wildcard /usr/lib/$(MULTIARCH)/openblas-openmp/libopenblas.so),)
    BLAS_LIB  := /usr/lib/$(MULTIARCH)/openblas-openmp/libopenblas.so
    BLAS_INC  := -I/usr/include/$(MULTIARCH)/openblas-openmp
    BLAS_NAME := OpenBLAS (openmp)
  else ifneq ($(wildcard /usr/lib/$(MULTIARCH)/openblas-pthread/libopenblas.so),)
    BLAS_LIB  := /usr/lib/$(MULTIARCH)/openblas-pthread/libopenblas.so
    BLAS_INC  := -I/usr/include/$(MULTIARCH)/openblas-pthread
    BLAS_NAME := OpenBLAS (pthread)
  else ifneq ($(shell pkg-config --exists openblas 2>/dev/null && echo 1),)
    BLAS_LIB  := $(shell pkg-config --libs openblas)
    BLAS_INC  := $(shell pkg-config --cflags openblas)
    BLAS_NAME := OpenBLAS
  endif
endif
ifneq ($(BLAS_LIB),)
  CPPFLAGS += $(BLAS_INC) -DMG_HAVE_BLAS '-DMG_BLAS_NAME="$(BLAS_NAME)"'
  LDLIBS   += $(BLAS_LIB) -Wl,-rpath,$(dir $(BLAS_LIB))
  FEATURES += BLAS:$(subst $() ,_,$(BLAS_NAME))
else
  FEATURES += BLAS:no(fallback-gemm)
endif

# ---- zlib (the CRC32 of checkpoint tensors; without it there are no checkpoints, whatever HDF5 says) --
ifndef NO_ZLIB
  HAVE_ZLIB := $(shell printf '\043include <zlib.h>\nint main(void){return (int)crc32(0L, 0, 0);}\n' | \
                 $(CC) -x c - -lz -o /dev/null 2>/dev/null && echo 1)
endif
ifeq ($(HAVE_ZLIB),1)
  CPPFLAGS += -DMG_HAVE_ZLIB
  LDLIBS   += -lz
  FEATURES += zlib:yes
else
  FEATURES += zlib:no
endif

# ---- HDF5 (serial flavour named explicitly: libhdf5-openmpi-dev flips the plain hdf5.pc) -----------
ifndef NO_HDF5
  HDF5_PC := $(shell pkg-config --exists hdf5-serial 2>/dev/null && echo hdf5-serial)
endif
ifneq ($(HDF5_PC),)
  ifeq ($(HAVE_ZLIB),1)
    CPPFLAGS += $(shell pkg-config --cflags $(HDF5_PC)) -DMG_HAVE_HDF5
    LDLIBS   += $(shell pkg-config --libs $(HDF5_PC))
    FEATURES += HDF5:yes
  else
    FEATURES += HDF5:no(checkpoints_need_zlib)
  endif
else
  FEATURES += HDF5:no
endif

# ---- MPI (Open MPI's mpicc wraps the compiler; the binary then bootstraps ranks through MPI) ---------
ifndef NO_MPI
  HAVE_MPI := $(shell command -v mpicc >/dev/null 2>&1 && echo 1)
endif
ifeq ($(HAVE_MPI),1)
  MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null)
  MPI_LIBS   := $(shell mpicc --showme:link 2>/dev/null)
  CPPFLAGS   += $(MPI_CFLAGS) -DMG_HAVE_MPI
  LDLIBS     += $(MPI_LIBS)
  FEATURES   += MPI:yes
else
  FEATURES   += MPI:no
endif

# ---- CUDA (kernels/cuda/) ---------------------------------------------------------------------------
# Where nvcc exists the real backend ("cuda", "cuda-fp32") is built for sm_80 and sm_90 and linked with
# cudart and cuBLASLt; it needs a GPU only at run time. The same kernel sources are also compiled by the
# C++ compiler against the CPU emulator (kernels/cuda/emu/: "cuda-emu", "cuda-emu-fp32"), so their tests run
# on machines without a GPU. NO_CUDA=1 leaves the real backend out, NO_CUDA_EMU=1 the emulated one.
CXX        ?= g++
CUDA_HOME  ?= /usr/local/cuda
CUDA_ARCHS ?= 80 90
ifndef NO_CUDA
  NVCC := $(shell command -v nvcc 2>/dev/null || (test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc))
endif
CUDA_SRC := $(wildcard kernels/cuda/*.cu)
ifneq ($(NVCC),)
  CUDA_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib $(dir $(NVCC))../lib64))
  NVCC_FLAGS  := -std=c++17 -O3 -g -lineinfo $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
                 -Xcompiler -Wall,-Wextra,-Wno-unknown-pragmas -I. -DMG_HAVE_CUDA
  CUDA_OBJ    := $(patsubst kernels/cuda/%.cu,$(BUILD)/obj/cuda/%.o,$(CUDA_SRC))
  CPPFLAGS    += -DMG_HAVE_CUDA
  LDLIBS      += -L$(CUDA_LIBDIR) -lcublasLt -lcudart -Wl,-rpath,$(CUDA_LIBDIR)
  FEATURES    += CUDA:yes(nvcc,sm_$(subst $() ,+sm_,$(CUDA_ARCHS)))
  # NCCL (the data-parallel collectives GPU to GPU, parallel/nccl.c): with the toolkit's or a system copy
  ifndef NO_NCCL
    NCCL_INC := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
    NCCL_LIB := $(firstword $(wildcard $(CUDA_LIBDIR)/libnccl.so /usr/lib/$(MULTIARCH)/libnccl.so))
  endif
  ifneq ($(NCCL_INC)$(NCCL_LIB),)
    ifneq ($(NCCL_INC),)
      ifneq ($(NCCL_LIB),)
        HAVE_NCCL := 1
      endif
    endif
  endif
  ifeq ($(HAVE_NCCL),1)
    CPPFLAGS += -DMG_HAVE_NCCL
    LDLIBS   += -L$(dir $(NCCL_LIB)) -lnccl -Wl,-rpath,$(dir $(NCCL_LIB))
    FEATURES += NCCL:yes
  else
    FEATURES += NCCL:no
  endif
else
  FEATURES += CUDA:no(no_nvcc)
endif
ifndef NO_CUDA_EMU
  HAVE_CXX := $(shell echo 'int main(){return 0;}' | $(CXX) -std=c++17 -x c++ - -o /dev/null 2>/dev/null && echo 1)
endif
ifeq ($(HAVE_CXX),1)
  CUDA_EMU_OBJ := $(patsubst kernels/cuda/%.cu,$(BUILD)/obj/cuda_emu/%.o,$(CUDA_SRC)) $(BUILD)/obj/cuda_emu/emu/cuda_emu.o
  CPPFLAGS     += -DMG_HAVE_CUDA_EMU
  FEATURES     += CUDA-emulator:yes
else
  FEATURES     += CUDA-emulator:no
endif
ifneq ($(CUDA_OBJ)$(CUDA_EMU_OBJ),)
  LDLIBS += -lstdc++
endif
# -fno-sanitize=null: under UBSan, GCC's null check misfires on the emulator's thread-local thread indices
# read inside a fiber (a null "uint3" that the debugger shows is not null); AddressSanitizer stays on.
CXXFLAGS := -std=c++17 -Wall -Wextra -Wno-unknown-pragmas -D_GNU_SOURCE -g $(OPT) -fno-math-errno -DMG_CUDA_EMU \
            $(if $(findstring sanitize,$(OPT)),-fno-sanitize=null)

CFLAGS := $(CFLAGS_BASE)

# ---- sources ----------------------------------------------------------------------------------------
CPU_KERNEL_SRC := $(wildcard kernels/cpu/*.c)
COMMON_SRC     := $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard src/*/*.c) $(wildcard kernels/*.c) \
                  $(wildcard parallel/*.c)
CPU_F32_OBJ    := $(patsubst kernels/cpu/%.c,$(BUILD)/obj/cpu_f32/%.o,$(CPU_KERNEL_SRC))
CPU_F64_OBJ    := $(patsubst kernels/cpu/%.c,$(BUILD)/obj/cpu_f64/%.o,$(CPU_KERNEL_SRC))
COMMON_OBJ     := $(patsubst %.c,$(BUILD)/obj/%.o,$(COMMON_SRC))
LIB_OBJ        := $(CPU_F32_OBJ) $(CPU_F64_OBJ) $(COMMON_OBJ) $(CUDA_OBJ) $(CUDA_EMU_OBJ)

TEST_SRC       := $(wildcard tests/test_*.c)
TEST_BIN       := $(patsubst tests/%.c,$(BUILD)/tests/%,$(filter-out tests/test_util.c,$(TEST_SRC)))
TEST_UTIL_OBJ  := $(BUILD)/obj/tests/test_util.o
# Helper sources of one test program live in tests/<name>/ (without the test_ prefix) and are linked
# into build/tests/test_<name> only.
BACKEND_OPS_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/backend_ops/*.c))

# The MPI workers of tests/test_parallel.sh and tests/test_dist.sh (run under mpirun, so not test_* programs),
# and the transport sweep of scripts/bench_transport.sh; only with MPI.
ifeq ($(HAVE_MPI),1)
  MPI_TEST_BIN := $(BUILD)/tests/mpi_scan_check $(BUILD)/tests/mpi_train_check $(BUILD)/tests/tp_sweep
endif

# The logits helper of tests/test_weights_io.sh (a tool, not a test program).
WIO_BIN := $(BUILD)/tests/wio_logits

.PHONY: all deps test test-only clean features quickstart
all: features $(BUILD)/megalodon $(TEST_BIN) $(MPI_TEST_BIN) $(WIO_BIN)

features:
	@echo "megalodon build: $(FEATURES)"

$(BUILD)/obj/cpu_f32/%.o: kernels/cpu/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/cpu_f64/%.o: kernels/cpu/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -DMG_FP64 $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/cuda/%.o: kernels/cuda/%.cu $(wildcard kernels/cuda/*.cuh kernels/cuda/*.h) kernels/ops.h src/common.h src/hash.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(BUILD)/obj/cuda_emu/%.o: kernels/cuda/%.cu
	@mkdir -p $(dir $@)
	$(CXX) -I. -MMD -MP $(CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/obj/cuda_emu/emu/%.o: kernels/cuda/emu/%.cc
	@mkdir -p $(dir $@)
	$(CXX) -I. -MMD -MP $(CXXFLAGS) -c $< -o $@

# The state scan's bit-identity across algorithms needs every multiply and add rounded on its own
# (parallel/state_scan.c): no contraction, and no vectorisation (GCC 12's complex-multiply pattern emits
# vfmaddsub even with -ffp-contract=off).
$(BUILD)/obj/parallel/%.o: CFLAGS += -ffp-contract=off -fno-tree-vectorize
$(BUILD)/obj/parallel/nccl.o: CPPFLAGS += $(if $(HAVE_NCCL),-I$(dir $(NCCL_INC)))

# Objects are linked directly (no archive) so that every op object is always part of the link.
$(BUILD)/megalodon: $(BUILD)/obj/src/main.o $(LIB_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_UTIL_OBJ) $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/test_backend_ops: $(BACKEND_OPS_OBJ)

$(BUILD)/tests/mpi_scan_check: $(BUILD)/obj/tests/parallel/mpi_scan_check.o $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/mpi_train_check: $(BUILD)/obj/tests/parallel/mpi_train_check.o $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/wio_logits: $(BUILD)/obj/tests/weights_io/wio_logits.o $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/tp_sweep: $(BUILD)/obj/tests/parallel/tp_sweep.o $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

deps:
	@scripts/setup.sh

# The whole suite: install missing packages, build, run every C test, script test and the PyTorch
# reference comparison; prints "N passed, N failed, N skipped" and fails if anything failed. Strict
# (MG_TEST_STRICT=1): with everything installed nothing may be skipped, so a skip fails the suite, except a
# GPU test's on a machine without a GPU (tests/README.md). A build with a part forced off (NO_HDF5=1,
# NO_OPENMP=1, ...) skips that part's tests by design, so it is not strict.
TEST_STRICT := $(if $(NO_BLAS)$(NO_OPENMP)$(NO_HDF5)$(NO_MPI),0,1)
# Then the suite under the sanitizers (`make sanitize-ci`, below): CI runs exactly `make test`, so this is how CI
# runs the suite under ASan + UBSan + LeakSanitizer too. SANITIZE_IN_TEST=0 leaves it out.
SANITIZE_IN_TEST ?= 1
test: deps
	@$(MAKE) --no-print-directory all
	@MG_TEST_STRICT=$(TEST_STRICT) scripts/run_tests.sh $(BUILD)
ifeq ($(SANITIZE_IN_TEST),1)
	@echo "== make test, part 2: the suite under AddressSanitizer + UndefinedBehaviorSanitizer (make sanitize-ci)"
	@$(MAKE) --no-print-directory sanitize-ci
endif

# Run the suite without the install step (for development loops); skips are reported, not failures.
test-only: all
	@scripts/run_tests.sh $(BUILD)

quickstart:
	@scripts/quickstart.sh

# AddressSanitizer + UndefinedBehaviorSanitizer with leak checking, in its own build directory, then the
# whole suite against it (tests/README.md: the leak policy and tests/lsan.supp, which names third-party
# libraries only). SANITIZE_FILTER=name runs a subset; `make sanitize-build` only builds. `make sanitize-ci`
# is the whole suite without the fuzz smoke runs (their harnesses are built with the same sanitizers
# already) and without the tests that run only Python (the PyTorch reference's self-checks, the plot
# script): the sanitizers would check nothing of ours there; `make test` runs it.
SAN_BUILD ?= build-sanitize
SAN_OPT   ?= -O2 -march=native -fsanitize=address,undefined -fno-omit-frame-pointer
SAN_ENV   := ASAN_OPTIONS=detect_leaks=1 \
             LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
             UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
.PHONY: sanitize sanitize-build sanitize-ci
# test_cuda_train trains on the emulated CUDA kernels, whose fibers switch through swapcontext under
# AddressSanitizer: minutes per run; the kernels run under the sanitizers in test_backend_ops, test_cuda
# and test_sp.
SANITIZE_CI_EXCLUDE := test_fuzz test_reference_selfcheck test_plot test_cuda_train
# The real CUDA objects are left out (NO_CUDA=1): AddressSanitizer and the CUDA driver do not mix (the
# driver maps the address range ASan reserves for its shadow memory); the kernels run under the sanitizers
# through the emulated backend.
sanitize-build:
	@$(MAKE) --no-print-directory all BUILD=$(SAN_BUILD) OPT="$(SAN_OPT)" NO_CUDA=1

sanitize: sanitize-build
	@$(SAN_ENV) MG_TEST_STRICT=$(TEST_STRICT) scripts/run_tests.sh $(SAN_BUILD) $(SANITIZE_FILTER)

sanitize-ci: sanitize-build
	@$(SAN_ENV) MG_TEST_EXCLUDE="$(SANITIZE_CI_EXCLUDE)" MG_TEST_STRICT=$(TEST_STRICT) scripts/run_tests.sh $(SAN_BUILD)


# ---- fuzzing (tests/fuzz/; how to run them for hours: docs/fuzzing.md) ------------------------------
# `make fuzz` builds the libFuzzer harnesses with clang (ASan + UBSan, leak checking on) into
# $(FUZZ_BUILD)/ and runs each for FUZZ_TIME seconds from its seeds (tests/test_fuzz.sh, also part of
# `make test`); `make fuzz-build` only builds. The library is compiled again with clang
# (-fsanitize=fuzzer-no-link) without OpenMP, BLAS or MPI, which the parsers do not use; HDF5 and zlib
# are needed (the checkpoint harness).
FUZZ_CC     ?= clang
FUZZ_BUILD  ?= build-fuzz
FUZZ_TIME   ?= 8
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -Wall -Wextra -Wno-unknown-pragmas -D_GNU_SOURCE -g -O1 $(FUZZ_SAN)
FUZZ_CPPFLAGS := -I. -MMD -MP -DMG_HAVE_ZLIB -DMG_HAVE_HDF5 $(if $(HDF5_PC),$(shell pkg-config --cflags $(HDF5_PC)))
FUZZ_LDLIBS := $(if $(HDF5_PC),$(shell pkg-config --libs $(HDF5_PC))) -lz -lm
FUZZ_NAMES  := config shard tokenizer ckpt
FUZZ_LIB_OBJ := $(patsubst kernels/cpu/%.c,$(FUZZ_BUILD)/obj/cpu_f32/%.o,$(CPU_KERNEL_SRC)) \
                $(patsubst kernels/cpu/%.c,$(FUZZ_BUILD)/obj/cpu_f64/%.o,$(CPU_KERNEL_SRC)) \
                $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(filter-out src/ckpt/no_hdf5.c,$(COMMON_SRC)))
FUZZ_BIN    := $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_NAMES)) $(FUZZ_BUILD)/fuzz_seeds

.PHONY: fuzz fuzz-build fuzz-check
.PRECIOUS: $(FUZZ_BUILD)/obj/tests/fuzz/%.o
fuzz-build: $(FUZZ_BIN)

fuzz-check:
	@command -v $(FUZZ_CC) >/dev/null || { echo "fuzz: no $(FUZZ_CC) (install clang and libclang-rt-dev: make deps)"; exit 1; }
	@test -n "$(HDF5_PC)" -a "$(HAVE_ZLIB)" = 1 || { echo "fuzz: needs serial HDF5 and zlib (libhdf5-dev, zlib1g-dev: make deps)"; exit 1; }

fuzz:
	@FUZZ_TIME=$(FUZZ_TIME) FUZZ_BUILD=$(FUZZ_BUILD) tests/test_fuzz.sh

$(FUZZ_BUILD)/obj/cpu_f32/%.o: kernels/cpu/%.c | fuzz-check
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/obj/cpu_f64/%.o: kernels/cpu/%.c | fuzz-check
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) -DMG_FP64 $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/obj/%.o: %.c | fuzz-check
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/obj/parallel/%.o: FUZZ_CFLAGS += -ffp-contract=off -fno-vectorize -fno-slp-vectorize

$(FUZZ_BUILD)/libmg.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_seeds: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_seeds.o $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_util.o \
                          $(FUZZ_BUILD)/libmg.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) $^ -o $@ $(FUZZ_LDLIBS)

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_util.o \
                      $(FUZZ_BUILD)/libmg.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ -o $@ $(FUZZ_LDLIBS)


clean:
	rm -rf $(BUILD) $(FUZZ_BUILD) $(SAN_BUILD)

-include $(shell find $(BUILD) $(FUZZ_BUILD) $(SAN_BUILD) -name '*.d' 2>/dev/null)
