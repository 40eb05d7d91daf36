/* test_optim: SGD (momentum, Nesterov) and Adam against torch.optim trajectories written by tests/ref/optim_ref.py;
 * schedules (exponential, cosine, warm-up) against their formulas; bad configs rejected. */
#include "mednet/optim.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

enum { N = 1000, STEPS = 5 };

int main(int argc, char **argv)
{
    TEST_EXPECT(argc == 2, "usage: test_optim REFERENCE.bin");
    if (argc != 2) return 1;
    FILE *f = fopen(argv[1], "rb");
    TEST_EXPECT(f != NULL, "cannot open %s", argv[1]);
    if (!f) return 1;
    size_t per_case = N * (1 + 2 * STEPS);
    float *ref = malloc(3 * per_case * sizeof(float));
    size_t got = fread(ref, sizeof(float), 3 * per_case, f);
    fclose(f);
    TEST_EXPECT(got == 3 * per_case, "reference file too short: %zu floats", got);
    if (got != 3 * per_case) return 1;

    for (int c = 0; c < 3; c++) {
        mn_optim_config cfg = mn_optim_defaults();
        cfg.schedule = MN_SCHED_CONSTANT;
        cfg.kind = c == 2 ? MN_OPTIM_ADAM : MN_OPTIM_SGD;
        cfg.lr = c == 2 ? 0.01 : 0.05;
        cfg.nesterov = c == 1;
        mn_optim *opt = NULL;
        TEST_EXPECT(mn_optim_create(&cfg, N, &opt) == MN_OK, "create");
        const float *r = ref + c * per_case;
        float p[N];
        memcpy(p, r, sizeof p);
        double worst = 0;
        for (int s = 0; s < STEPS; s++) {
            const float *g = r + N * (1 + 2 * s), *want = r + N * (2 + 2 * s);
            /* Update in two ranges to exercise offsets. */
            TEST_EXPECT(mn_optim_update(opt, p, g - 0, 0, 400, cfg.lr, s + 1) == MN_OK, "update");
            TEST_EXPECT(mn_optim_update(opt, p, g, 400, N - 400, cfg.lr, s + 1) == MN_OK, "update");
            double e = mn_test_max_relerr(p, want, N, 1e-2); /* params are O(1): floor at 1e-2 */
            if (e > worst) worst = e;
        }
        printf("optimiser case %d (%s): worst relative error vs torch over %d steps %.2e\n", c,
               c == 0 ? "SGD momentum" : c == 1 ? "SGD nesterov" : "Adam", STEPS, worst);
        TEST_EXPECT(worst < 1e-5, "case %d deviates from torch: %.3e", c, worst);
        mn_optim_destroy(&opt);
        TEST_EXPECT(opt == NULL, "destroy clears");
    }
    free(ref);

    /* Schedules. */
    mn_optim_config cfg = mn_optim_defaults();
    cfg.lr = 0.1;
    cfg.gamma = 0.5;
    cfg.decay_steps = 10;
    TEST_EXPECT(fabs(mn_optim_lr(&cfg, 20) - 0.025) < 1e-12, "exponential");
    cfg.schedule = MN_SCHED_COSINE;
    cfg.total_steps = 100;
    cfg.min_lr = 0.0;
    TEST_EXPECT(fabs(mn_optim_lr(&cfg, 50) - 0.05) < 1e-12 && fabs(mn_optim_lr(&cfg, 100)) < 1e-12, "cosine");
    cfg.warmup_steps = 10;
    TEST_EXPECT(fabs(mn_optim_lr(&cfg, 0) - 0.01) < 1e-12, "warm-up start: %g", mn_optim_lr(&cfg, 0));
    cfg.lr = -1;
    mn_optim *opt = NULL;
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_optim_create(&cfg, 10, &opt) == MN_ERR_ARG && opt == NULL, "negative lr rejected");
    mn_error_set_quiet(0);
    return mn_test_finish("test_optim");
}
