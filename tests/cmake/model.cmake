# Model: the MedicalNet ResNet family, heads, flat parameters, safetensors import/export, PyTorch parity.
mn_test(test_model_layout SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_layout.c TIMEOUT 60 LABELS model)
mn_test(test_model_shapes SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_shapes.c TIMEOUT 120 LABELS model)
mn_test(test_model_grad SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_grad.c TIMEOUT 300 LABELS model)
# PyTorch parity, one ctest entry per depth (each well under a minute on 2 cores), and one for the model loss with
# soft Dice (resnet10, CE + 0.5 Dice).
mn_test(test_model_parity SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_parity.c ARGS 10 TIMEOUT 300 LABELS "model;ref")
target_compile_definitions(test_model_parity PRIVATE MN_PYTHON="${MN_PYTHON}" MN_REF_DIR="${CMAKE_CURRENT_SOURCE_DIR}/ref")
add_test(NAME test_model_parity_dice COMMAND test_model_parity dice)
add_test(NAME test_model_parity_18 COMMAND test_model_parity 18)
add_test(NAME test_model_parity_50 COMMAND test_model_parity 50)
set_tests_properties(test_model_parity_dice test_model_parity_18 test_model_parity_50 PROPERTIES TIMEOUT 300 LABELS "model;ref"
                     ENVIRONMENT "OMP_NUM_THREADS=1")
mn_test(test_safetensors SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_safetensors.c TIMEOUT 300 LABELS model)
# The `mednet model` command (tests/unit/test_model_cli.sh checks every exit status, then the output, then values):
# the parameter table of the seven depths; an export -> seeded random values -> strict import -> export round trip
# compared bitwise, and a file missing one tensor refused with status 1; the MedicalNet checkpoint converter (a fake
# resnet_10.pth with random tensors and DataParallel's 'module.' prefix -> safetensors -> strict import -> export,
# every value compared bitwise with the .pth).
foreach(case table export_import convert)
  add_test(NAME cli_model_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_cli.sh ${case} $<TARGET_FILE:mednet> ${MN_PYTHON}
                   ${CMAKE_CURRENT_BINARY_DIR}/cli_model_${case})
  set_tests_properties(cli_model_${case} PROPERTIES TIMEOUT 300 LABELS "model;ref" ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
mn_test(test_model_heads SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_heads.c TIMEOUT 60 LABELS model)
