# The compressor end to end (tests/quant): calibration and evaluation text from files
# every Debian machine has (make_corpus.py), quality orderings on stories260K through
# the CLI, and, where scripts/make-gptq-model has made its venv and checkpoints (CI
# does, before the tests), nibble's GPTQ checkpoints loaded by transformers/GPTQModel.
add_test(NAME quant_corpus
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/quant/make_corpus.py ${PROJECT_BINARY_DIR}/quant_corpus)
set_tests_properties(quant_corpus PROPERTIES LABELS integration TIMEOUT 120 FIXTURES_SETUP quant_corpus)

add_test(NAME quant_quality_stories260k
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/quant/quality_test.py
                 --nibble $<TARGET_FILE:nibble> --shared ${NIBBLE_SHARED_DIR}
                 --corpus ${PROJECT_BINARY_DIR}/quant_corpus --work ${PROJECT_BINARY_DIR}/quant_quality)
set_tests_properties(quant_quality_stories260k PROPERTIES LABELS integration TIMEOUT 900
                     FIXTURES_REQUIRED quant_corpus)

set(NIBBLE_GPTQ_PYTHON "${PROJECT_SOURCE_DIR}/.cache/venvs/gptq/bin/python" CACHE FILEPATH
    "Python of scripts/make-gptq-model's venv (torch, transformers, GPTQModel)")
set(nibble_smollm2_base "${NIBBLE_MODEL_CACHE}/quant_work/smollm2_base")
set(nibble_smollm2_calib "${NIBBLE_MODEL_CACHE}/quant_work/smollm2_calibration_ids.json")
set(nibble_smollm2_gptqmodel "${NIBBLE_MODEL_CACHE}/smollm2-135m-gptq-g128")
if(EXISTS "${NIBBLE_GPTQ_PYTHON}" AND EXISTS "${nibble_smollm2_base}/model.safetensors"
   AND EXISTS "${nibble_smollm2_calib}" AND EXISTS "${nibble_smollm2_gptqmodel}/model.safetensors")
  add_test(NAME quant_interop_gptqmodel
           COMMAND ${NIBBLE_GPTQ_PYTHON} ${PROJECT_SOURCE_DIR}/tests/quant/interop_test.py
                   --nibble $<TARGET_FILE:nibble> --base ${nibble_smollm2_base} --calib-ids ${nibble_smollm2_calib}
                   --corpus ${PROJECT_BINARY_DIR}/quant_corpus
                   --gptqmodel-checkpoint ${nibble_smollm2_gptqmodel} --work ${PROJECT_BINARY_DIR}/quant_interop)
  set_tests_properties(quant_interop_gptqmodel PROPERTIES LABELS integration TIMEOUT 1500 PROCESSORS 2
                       FIXTURES_REQUIRED quant_corpus ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")
else()
  message(STATUS "quant_interop_gptqmodel: not registered (needs scripts/make-gptq-model's venv at "
                 "${NIBBLE_GPTQ_PYTHON} and its SmolLM2 checkpoints)")
endif()

# `nibble quantize --format gguf` on a tiny F32 llama GGUF, read back by gguf-py
# (llama.cpp's Python package): key/values, tensor types, every block layout.
add_test(NAME quant_gguf_output
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/quant/check_gguf_output.py
                 --nibble $<TARGET_FILE:nibble> --work ${PROJECT_BINARY_DIR}/quant_gguf_output)
set_tests_properties(quant_gguf_output PROPERTIES LABELS integration TIMEOUT 300)
