# End-to-end pre-training on the real mricron corpus (tests/train/run_pretrain_test.sh): the corpus is built once
# by a fixture, then the loss/Dice (training crops, and a held-out scan against stated thresholds), resume, replica,
# determinism, signal and bad-config cases, and the failure cases (replica
# fault, signal during set-up, user errors, the output-folder lock, a damaged corpus) run against it.
set(MN_TRAIN_DIR ${CMAKE_BINARY_DIR}/train-tests)
file(MAKE_DIRECTORY ${MN_TRAIN_DIR})
add_test(NAME train_prep_mricron
         COMMAND ${MN_MPIEXEC} -n 2 $<TARGET_FILE:mednet> prep ${PROJECT_SOURCE_DIR}/configs/corpus_mricron.ini
                 --output ${MN_TRAIN_DIR}/corpus_mricron.h5 --force)
set_tests_properties(train_prep_mricron PROPERTIES FIXTURES_SETUP mricron_corpus TIMEOUT 300 LABELS "mpi;train"
                     ENVIRONMENT "OMP_NUM_THREADS=1")
function(mn_train_case name)
  cmake_parse_arguments(T "" "NP;TIMEOUT" "" ${ARGN})
  set(test pretrain_${name})
  set(env "OMP_NUM_THREADS=1")
  if(T_NP)
    set(test ${test}_np${T_NP})
    list(APPEND env "NP=${T_NP}")
  endif()
  add_test(NAME ${test}
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/train/run_pretrain_test.sh ${name} $<TARGET_FILE:mednet>
                   ${PROJECT_SOURCE_DIR}/configs/pretrain_mricron.ini ${MN_TRAIN_DIR}/corpus_mricron.h5
                   ${MN_TRAIN_DIR}/${test} ${MN_MPIEXEC})
  set_tests_properties(${test} PROPERTIES FIXTURES_REQUIRED mricron_corpus TIMEOUT ${T_TIMEOUT} LABELS "mpi;train"
                       ENVIRONMENT "${env}")
endfunction()
mn_train_case(e2e TIMEOUT 900)
mn_train_case(resume TIMEOUT 300)
mn_train_case(stream TIMEOUT 300)
mn_train_case(signal TIMEOUT 300)
mn_train_case(badconfig TIMEOUT 120)
mn_train_case(finetune TIMEOUT 300)
# Fine-tuning recipes: a frozen encoder stays bit for bit the initial one, a head warm-up freezes it for its steps only.
mn_train_case(freeze TIMEOUT 200)
mn_train_case(export TIMEOUT 400)
mn_train_case(filter TIMEOUT 1500)
mn_train_case(nan TIMEOUT 300)
foreach(np 2 3 4)
  mn_train_case(replicas NP ${np} TIMEOUT 300)
endforeach()
# On one rank there is no replica to compare: two runs of one configuration give bitwise identical checkpoints.
mn_train_case(determinism NP 1 TIMEOUT 300)
# Failures end the whole job cleanly: a replica mismatch injected on one holder of a head (5 ranks), SIGUSR1 during
# set-up, user mistakes (depth, init_encoder, a checkpoint of another depth), a second run on a locked output
# folder, damaged corpus files.  Each checks the exit status and the message; the script's own `timeout 120` per
# run turns a hang into a failure.
mn_train_case(replica_fault TIMEOUT 180)
mn_train_case(signal_setup TIMEOUT 150)
mn_train_case(user_errors TIMEOUT 400)
mn_train_case(lock TIMEOUT 400)
mn_train_case(corrupt_corpus TIMEOUT 300)
# Classification: bad class_labels CSVs (missing subject, out-of-range and non-integer label) and a segmentation
# head on a classification corpus are refused with one message.  (The script's `train` case, a short fine-tune with
# a held-out accuracy threshold, is not registered yet: 60 steps reach 0.62 held-out accuracy, below its 0.75.)
add_test(NAME classify_badcsv
         COMMAND bash ${PROJECT_SOURCE_DIR}/tests/train/run_classify_test.sh badcsv $<TARGET_FILE:mednet>
                 ${PROJECT_SOURCE_DIR} ${MN_TRAIN_DIR}/classify_badcsv ${MN_MPIEXEC})
set_tests_properties(classify_badcsv PROPERTIES TIMEOUT 300 LABELS "mpi;train")
# Classification fine-tuning end to end (two classes made from mricron-data): the loss falls and the held-out
# accuracy ends >= 0.75 on 1 rank and on 2 ranks with synchronised batch norm; the per-rank batch norm warning.
add_test(NAME classify_train
         COMMAND bash ${PROJECT_SOURCE_DIR}/tests/train/run_classify_test.sh train $<TARGET_FILE:mednet>
                 ${PROJECT_SOURCE_DIR} ${MN_TRAIN_DIR}/classify_train ${MN_MPIEXEC})
set_tests_properties(classify_train PROPERTIES TIMEOUT 600 LABELS "train;slow" PROCESSORS 2)
