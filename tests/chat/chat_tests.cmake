# The `chat_template_fixtures` setup test: renders real chat templates with jinja2
# (tests/chat/make_template_fixtures.py) so chat_template_test can compare byte for
# byte. The downloaded sdist is cached in the build dir, never in the repository.
set(NIBBLE_CHAT_FIXTURES "${PROJECT_BINARY_DIR}/chat_template_fixtures")
add_test(NAME chat_template_fixtures
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/chat/make_template_fixtures.py
                 --gguf ${NIBBLE_MODEL_CACHE}/SmolLM2-135M-Instruct.Q4_1.gguf
                 --cache ${PROJECT_BINARY_DIR}/download_cache --out ${NIBBLE_CHAT_FIXTURES})
set_tests_properties(chat_template_fixtures PROPERTIES FIXTURES_SETUP chat_template_fixtures LABELS unit TIMEOUT 900)
