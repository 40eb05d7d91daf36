# Model: the MedicalNet ResNet family, heads, flat parameters, safetensors import/export, PyTorch parity.
mn_test(test_model_layout SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_layout.c TIMEOUT 60 LABELS model)
mn_test(test_model_shapes SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_shapes.c TIMEOUT 120 LABELS model)
mn_test(test_model_grad SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_grad.c TIMEOUT 120 LABELS model)
# PyTorch parity, one ctest entry per depth (each well under a minute on 2 cores).
mn_test(test_model_parity SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_parity.c ARGS 10 TIMEOUT 300 LABELS "model;ref")
target_compile_definitions(test_model_parity PRIVATE MN_PYTHON="${MN_PYTHON}" MN_REF_DIR="${CMAKE_CURRENT_SOURCE_DIR}/ref")
add_test(NAME test_model_parity_18 COMMAND test_model_parity 18)
add_test(NAME test_model_parity_50 COMMAND test_model_parity 50)
set_tests_properties(test_model_parity_18 test_model_parity_50 PROPERTIES TIMEOUT 300 LABELS "model;ref"
                     ENVIRONMENT "OMP_NUM_THREADS=1")
mn_test(test_safetensors SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_safetensors.c TIMEOUT 120 LABELS model)
