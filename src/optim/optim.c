/* optim.c: SGD with momentum / Nesterov and Adam over flat ranges, and the learning-rate schedules.
 *
 * The loops are written so the compiler vectorises them and so every replica computes bitwise the same result:
 * no reductions, no thread-count dependence (each element is independent, so OpenMP splitting cannot change the
 * arithmetic).  Adam's bias corrections are computed in double once per call.
 */
#include "mednet/optim.h"
#include "mednet/config.h"
#include "mednet/mem.h"

#include <math.h>
#include <stdlib.h>

struct mn_optim {
    mn_optim_config cfg;
    size_t n;
    float *m, *v; /* SGD: m = momentum buffer; Adam: m, v moments */
};

mn_optim_config mn_optim_defaults(void)
{
    mn_optim_config c = {0};
    c.kind = MN_OPTIM_SGD;
    c.lr = 1e-3;
    c.head_lr_mult = 1.0;
    c.momentum = 0.9;
    c.weight_decay = 1e-3;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.schedule = MN_SCHED_EXPONENTIAL;
    c.gamma = 0.99;
    c.decay_steps = 100;
    c.total_steps = 1000;
    return c;
}

mn_err mn_optim_create(const mn_optim_config *cfg, size_t n, mn_optim **out)
{
    *out = NULL;
    MN_CHECK(cfg->lr > 0 && isfinite(cfg->lr), MN_ERR_ARG, "learning rate must be > 0, got %g", cfg->lr);
    MN_CHECK(cfg->momentum >= 0 && cfg->momentum < 1, MN_ERR_ARG, "momentum must be in [0, 1), got %g", cfg->momentum);
    MN_CHECK(cfg->weight_decay >= 0, MN_ERR_ARG, "weight_decay must be >= 0, got %g", cfg->weight_decay);
    MN_CHECK(cfg->kind != MN_OPTIM_ADAM || (cfg->beta1 >= 0 && cfg->beta1 < 1 && cfg->beta2 >= 0 && cfg->beta2 < 1),
             MN_ERR_ARG, "Adam betas must be in [0, 1), got %g, %g", cfg->beta1, cfg->beta2);
    MN_CHECK(cfg->schedule != MN_SCHED_EXPONENTIAL || (cfg->gamma > 0 && cfg->gamma <= 1 && cfg->decay_steps > 0),
             MN_ERR_ARG, "exponential schedule needs 0 < gamma <= 1 and decay_steps > 0 (got %g, %ld)", cfg->gamma,
             cfg->decay_steps);
    MN_CHECK(cfg->schedule != MN_SCHED_COSINE || cfg->total_steps > 0, MN_ERR_ARG,
             "cosine schedule needs total_steps > 0, got %ld", cfg->total_steps);
    mn_optim *o = calloc(1, sizeof *o);
    MN_CHECK(o, MN_ERR_MEM, "out of memory for the optimiser");
    o->cfg = *cfg;
    o->n = n;
    mn_err e = MN_OK;
    if (cfg->kind == MN_OPTIM_ADAM || cfg->momentum > 0) e = mn_calloc(n * sizeof(float), "optimiser state m", (void **)&o->m);
    if (!e && cfg->kind == MN_OPTIM_ADAM) e = mn_calloc(n * sizeof(float), "optimiser state v", (void **)&o->v);
    if (e) {
        mn_optim_destroy(&o);
        MN_CALL(e);
    }
    *out = o;
    return MN_OK;
}

void mn_optim_destroy(mn_optim **opt)
{
    if (!opt || !*opt) return;
    mn_free(&(*opt)->m);
    mn_free(&(*opt)->v);
    free(*opt);
    *opt = NULL;
}

double mn_optim_lr(const mn_optim_config *cfg, long step)
{
    double lr = cfg->lr;
    switch (cfg->schedule) {
    case MN_SCHED_CONSTANT: break;
    case MN_SCHED_EXPONENTIAL: lr *= pow(cfg->gamma, (double)step / (double)cfg->decay_steps); break;
    case MN_SCHED_COSINE: {
        double t = (double)(step < cfg->total_steps ? step : cfg->total_steps) / (double)cfg->total_steps;
        lr = cfg->min_lr + 0.5 * (cfg->lr - cfg->min_lr) * (1.0 + cos(3.14159265358979323846 * t));
        break;
    }
    }
    if (cfg->warmup_steps > 0 && step < cfg->warmup_steps) lr *= (double)(step + 1) / (double)cfg->warmup_steps;
    return lr;
}

mn_err mn_optim_update(mn_optim *opt, float *params, const float *grads, size_t off, size_t len, double lr, long t)
{
    MN_CHECK(off + len <= opt->n, MN_ERR_ARG, "optimiser range [%zu, %zu) outside the %zu parameters", off, off + len,
             opt->n);
    MN_CHECK(isfinite(lr) && lr >= 0, MN_ERR_ARG, "learning rate must be finite and >= 0, got %g", lr);
    float *p = params + off;
    const float *g = grads + off;
    const float wd = (float)opt->cfg.weight_decay, flr = (float)lr;
    if (opt->cfg.kind == MN_OPTIM_SGD) {
        const float mom = (float)opt->cfg.momentum;
        if (!opt->m) {
#pragma omp parallel for simd schedule(static)
            for (size_t i = 0; i < len; i++) p[i] -= flr * (g[i] + wd * p[i]);
            return MN_OK;
        }
        float *m = opt->m + off;
        const int nesterov = opt->cfg.nesterov;
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < len; i++) {
            float d = g[i] + wd * p[i];
            float b = mom * m[i] + d;
            m[i] = b;
            p[i] -= flr * (nesterov ? d + mom * b : b);
        }
        return MN_OK;
    }
    MN_CHECK(t >= 1, MN_ERR_ARG, "Adam step count must be >= 1, got %ld", t);
    const double b1 = opt->cfg.beta1, b2 = opt->cfg.beta2;
    /* Same operation order as torch.optim.Adam (single-tensor path): step = lr / (1 - b1^t) in double, then
     * p += -step * m / (sqrt(v) / sqrt(1 - b2^t) + eps) in float. */
    const float step = (float)(lr / (1.0 - pow(b1, (double)t)));
    const float sbc2 = (float)sqrt(1.0 - pow(b2, (double)t));
    const float fb1 = (float)b1, fb2 = (float)b2, eps = (float)opt->cfg.eps;
    const float a1 = (float)(1.0 - b1), a2 = (float)(1.0 - b2); /* in double first, as torch does */
    float *m = opt->m + off, *v = opt->v + off;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < len; i++) {
        float d = g[i] + wd * p[i];
        m[i] = fb1 * m[i] + a1 * d;
        v[i] = fb2 * v[i] + a2 * (d * d);
        p[i] += -step * (m[i] / (sqrtf(v[i]) / sbc2 + eps));
    }
    return MN_OK;
}

int mn_optim_state_count(const mn_optim *opt) { return (opt->m != NULL) + (opt->v != NULL); }

float *mn_optim_state(mn_optim *opt, int i, size_t *len)
{
    *len = opt->n;
    return i == 0 ? opt->m : i == 1 ? opt->v : NULL;
}

mn_err mn_optim_config_read(struct mn_config *c, const char *sec, long total_steps, mn_optim_config *o,
                            double *head_lr_mult)
{
    *o = mn_optim_defaults();
    static const char *const recipes[] = {"none", "medicalnet", "adam", NULL};
    static const char *const kinds[] = {"sgd", "adam", NULL};
    static const char *const scheds[] = {"constant", "exponential", "cosine", NULL};
    int k;
    /* A recipe only changes the defaults of the keys below; a key given explicitly still wins. */
    MN_CALL(mn_config_choice(c, sec, "recipe", "none", recipes, &k));
    double mult = 1.0;
    if (k == 1) { /* MedicalNet's train.py: SGD 0.9, decay 1e-3, lr 1e-3, new layers x100, ExponentialLR 0.99 */
        o->kind = MN_OPTIM_SGD, o->lr = 1e-3, o->momentum = 0.9, o->weight_decay = 1e-3;
        o->schedule = MN_SCHED_EXPONENTIAL, o->gamma = 0.99, mult = 100.0;
    } else if (k == 2) { /* Adam, lr 1e-3, decay 1e-3, new layers x10 (x100 makes Adam's head steps too large) */
        o->kind = MN_OPTIM_ADAM, o->lr = 1e-3, o->weight_decay = 1e-3;
        o->schedule = MN_SCHED_EXPONENTIAL, o->gamma = 0.99, mult = 10.0;
    }
    MN_CALL(mn_config_choice(c, sec, "kind", kinds[o->kind], kinds, &k));
    o->kind = (mn_optim_kind)k;
    MN_CALL(mn_config_double(c, sec, "lr", o->lr, 1e-12, 1e3, &o->lr));
    MN_CALL(mn_config_double(c, sec, "head_lr_mult", mult, 0, 1e6, head_lr_mult));
    MN_CALL(mn_config_double(c, sec, "momentum", o->momentum, 0, 0.999999, &o->momentum));
    MN_CALL(mn_config_bool(c, sec, "nesterov", 0, &o->nesterov));
    MN_CALL(mn_config_double(c, sec, "weight_decay", o->weight_decay, 0, 1, &o->weight_decay));
    MN_CALL(mn_config_double(c, sec, "beta1", o->beta1, 0, 0.999999, &o->beta1));
    MN_CALL(mn_config_double(c, sec, "beta2", o->beta2, 0, 0.999999999, &o->beta2));
    MN_CALL(mn_config_double(c, sec, "eps", o->eps, 1e-30, 1, &o->eps));
    MN_CALL(mn_config_choice(c, sec, "schedule", scheds[o->schedule], scheds, &k));
    o->schedule = (mn_sched_kind)k;
    MN_CALL(mn_config_double(c, sec, "gamma", o->gamma, 1e-9, 1, &o->gamma));
    MN_CALL(mn_config_int(c, sec, "decay_steps", o->decay_steps, 1, 1L << 40, &o->decay_steps));
    MN_CALL(mn_config_int(c, sec, "warmup_steps", 0, 0, 1L << 40, &o->warmup_steps));
    MN_CALL(mn_config_double(c, sec, "min_lr", 0, 0, 1e3, &o->min_lr));
    o->total_steps = total_steps > 0 ? total_steps : 1;
    return MN_OK;
}
