// Each kernel family's host file registers its Python bindings with CK_REGISTER, so adding a
// family never edits bindings.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace ck {
using RegisterFn = void (*)(pybind11::module_&);
int add_registration(RegisterFn fn);
}  // namespace ck

#define CK_REGISTER(fn) static int ck_registration_##fn = ::ck::add_registration(fn)
