# The sampling rule and the part table.
# The weighted dataset mixture of the sampler equals the rule (volumes or datasets) for 1-5 ranks and two corpus
# layouts, and the unweighted one does not (serial, in memory, a few seconds).
mn_test(test_sampler_mixture SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_sampler_mixture.c TIMEOUT 60
        LABELS unit)
# The part table on 3-5 ranks: rows and holders, batch-norm averaging weighted by samples through the gradient
# path, and replica checks whose mismatch (on one holder of a head, or the encoder on one rank) is an agreed error
# on every rank; a check agreed only among a head's holders hangs the job, which the TIMEOUT turns into a failure.
mn_mpi_test(test_parts SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_parts.c NPROCS 3 4 5 TIMEOUT 60)
