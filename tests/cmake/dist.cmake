# Distributed training infrastructure: communicators, reducer, checksums (src/parallel), checkpoints (src/io/ckpt.c),
# signals (src/train/signals.c), and the Slurm tests (tests/slurm): single-node, and two nodes in namespaces.
mn_mpi_test(test_dist SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_dist.c NPROCS 1 2 3 4 TIMEOUT 60)

# A rank that fails on purpose must end the job within seconds: the wrapper checks status, message and time.
add_executable(test_dist_abort ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_dist_abort.c)
target_compile_options(test_dist_abort PRIVATE ${MN_WARNINGS})
target_link_libraries(test_dist_abort PRIVATE mednet_lib)
foreach(np 1 2 3 4)
  add_test(NAME test_dist_abort_np${np}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_dist_abort.sh ${np} $<TARGET_FILE:test_dist_abort>
                   ${MN_MPIEXEC})
  set_tests_properties(test_dist_abort_np${np} PROPERTIES TIMEOUT 90 LABELS "mpi" PROCESSORS ${np})
endforeach()

# Checkpoints: round trip, retention, killed write, damaged files; written by rank 0, read by every rank.
mn_mpi_test(test_ckpt SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_ckpt.c NPROCS 1 2 3 4 TIMEOUT 60)

# Signals: the flag set by SIGUSR1/SIGTERM and its agreement over the ranks.
mn_mpi_test(test_dist_signals SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_dist_signals.c NPROCS 1 2 3 4 TIMEOUT 60)

# Slurm: a private single-node Slurm (tests/slurm/slurm_harness.sh) runs a 2-task `mednet info` job, a forgotten
# srun (launch check), a rank failing on purpose under srun and jobs/scaling_sweep.sh, with a stand-in program
# (tests/slurm/sigprog.c) where mednet itself is not needed.  Runs serially (it starts daemons), about 30 s.
add_executable(sigprog ${CMAKE_CURRENT_SOURCE_DIR}/slurm/sigprog.c)
target_compile_options(sigprog PRIVATE ${MN_WARNINGS})
target_link_libraries(sigprog PRIVATE mednet_lib)
add_test(NAME test_slurm_jobs
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/slurm_harness.sh
                 bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_slurm_jobs.sh $<TARGET_FILE:mednet> $<TARGET_FILE:sigprog>
                 ${PROJECT_SOURCE_DIR}/jobs)
set_tests_properties(test_slurm_jobs PROPERTIES TIMEOUT 240 LABELS "slurm" RUN_SERIAL TRUE)

# The requeue rule of jobs/pretrain.sbatch with sigprog (which leaves the REQUEUE marker as mednet does): one drill
# `sbatch --export=NONE -N 1 --ntasks-per-node=3` (3 ranks) -> SIGUSR1 to the batch shell -> checkpoint -> marker
# -> requeue -> resume -> done (MN_DRILL_N=20 in the environment repeats it); a plain scancel ends CANCELLED without
# a requeue; a preemption (SIGTERM to the ranks only) requeues.  About 60 s.
add_test(NAME test_slurm_requeue
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/slurm_harness.sh
                 bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_slurm_requeue.sh $<TARGET_FILE:sigprog>
                 ${PROJECT_SOURCE_DIR}/jobs)
set_tests_properties(test_slurm_requeue PROPERTIES TIMEOUT 240 LABELS "slurm" RUN_SERIAL TRUE)

# The local runner: signal forwarding to mpirun's ranks and resume, with the same stand-in.
add_test(NAME test_run_local
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_run_local.sh $<TARGET_FILE:sigprog> ${PROJECT_SOURCE_DIR}/jobs)
set_tests_properties(test_run_local PROPERTIES TIMEOUT 90 LABELS "mpi" PROCESSORS 2)

# The real mednet under Slurm: jobs/prep.sbatch builds the corpus (--export=NONE), a 2-task pre-training job runs
# to completion, and a job whose 1-minute limit runs out (--signal=B:USR1@45 -> checkpoint -> marker -> requeue ->
# resume -> done).  About 90 s.
add_test(NAME test_slurm_pretrain
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/slurm_harness.sh
                 bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_slurm_pretrain.sh $<TARGET_FILE:mednet>
                 ${PROJECT_SOURCE_DIR}/configs ${PROJECT_SOURCE_DIR}/jobs)
set_tests_properties(test_slurm_pretrain PROPERTIES TIMEOUT 330 LABELS "slurm" RUN_SERIAL TRUE
                     ENVIRONMENT "MN_SLURM_TIMEOUT=310")

# Two Slurm nodes on this machine (slurm_harness.sh --nodes 2: each slurmd in network, UTS and mount namespaces of its
# own): `mednet info` sees 4 ranks on 2 nodes (Open MPI: tcp between the nodes, shared memory only within one),
# jobs/prep.sbatch builds the corpus from both nodes, and the README's multi-node example (`sbatch -N 2
# --ntasks-per-node=2 jobs/pretrain.sbatch ...`) runs the signal-and-requeue drill to completion.  Launched as the MPI
# library needs: Open MPI with srun --mpi=pmix; MPICH with srun --mpi=pmi2 and with Hydra's mpiexec inside the
# allocation (MEDNET_LAUNCHER).  Label slurm_multinode (matched by -L/-LE slurm; the MPICH pass of .ci/run selects
# that label).  About 60-90 s each on 2 idle cores; needs root (namespaces).
mn_mpi_flavour_of_header(mn_multinode_flavour)
if(mn_multinode_flavour STREQUAL "openmpi")
  set(mn_multinode_launches pmix)
else()
  set(mn_multinode_launches pmi2 mpiexec)
endif()
foreach(l ${mn_multinode_launches})
  if(l STREQUAL "mpiexec")
    set(arg mpiexec)
  else()
    set(arg srun-${l})
  endif()
  add_test(NAME test_slurm_multinode_${l}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/slurm_harness.sh --nodes 2
                   bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_slurm_multinode.sh $<TARGET_FILE:mednet>
                   ${PROJECT_SOURCE_DIR}/configs ${PROJECT_SOURCE_DIR}/jobs ${arg})
  set_tests_properties(test_slurm_multinode_${l} PROPERTIES TIMEOUT 480 LABELS "slurm_multinode" RUN_SERIAL TRUE
                       ENVIRONMENT "MN_SLURM_TIMEOUT=450")
endforeach()
